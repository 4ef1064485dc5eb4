rule train:
    input:
        train=dataset_file("train"),
        test=dataset_file("test"),
        user_checkpoint=user_checkpoint,
        source_files=model_source_files,
    output:
        checkpoint=f"{RESULTS}/models/{{model}}.pt",
        metrics=f"{RESULTS}/metrics/{{model}}.json",
    params:
        settings=stage_settings("train"),
    log:
        f"{LOGS}/train_{{model}}.log",
    benchmark:
        f"{LOGS}/benchmarks/train_{{model}}.tsv"
    threads: config["threads"]
    resources:
        gpu=1,
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT
