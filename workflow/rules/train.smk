rule train:
    input:
        train=dataset_file("train"),
        test=dataset_file("test"),
        user_checkpoint=user_checkpoint,
    output:
        checkpoint=f"{RESULTS}/models/{{model}}.pt",
        metrics=f"{RESULTS}/metrics/{{model}}.json",
    params:
        settings=config["train"],  # a changed setting reruns the rule (Snakemake's params trigger)
        device=config["device"],
    log:
        f"logs/{DATASET}/train_{{model}}.log",
    threads: config["threads"]
    resources:
        gpu=1,
    conda:
        "../envs/onepixel.yaml"
    script:
        "../scripts/train.py"
