rule capture:
    input:
        checkpoint=rules.train.output.checkpoint,
        test=dataset_file("test"),
        attack=rules.attack.output[0],
    output:
        directory(f"{RESULTS}/cubes/{{model}}"),
    params:
        settings=config["capture"],  # a changed setting reruns the rule (Snakemake's params trigger)
        device=config["device"],
    log:
        f"logs/{DATASET}/capture_{{model}}.log",
    threads: config["threads"]
    resources:
        gpu=1,
    conda:
        "../envs/onepixel.yaml"
    script:
        "../scripts/capture.py"
