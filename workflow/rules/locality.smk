rule locality:
    input:
        checkpoint=rules.train.output.checkpoint,
        test=dataset_file("test"),
        attack=rules.attack.output[0],
    output:
        f"{RESULTS}/locality/{{model}}.nc",
    params:
        settings=config["locality"],  # a changed setting reruns the rule (Snakemake's params trigger)
        device=config["device"],
    log:
        f"logs/{DATASET}/locality_{{model}}.log",
    threads: config["threads"]
    resources:
        gpu=1,
    conda:
        "../envs/onepixel.yaml"
    script:
        "../scripts/locality.py"
