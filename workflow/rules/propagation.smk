rule propagation:
    input:
        rules.capture.output[0],
    output:
        f"{RESULTS}/propagation/{{model}}.nc",
    params:
        settings=config["propagation"],  # a changed setting reruns the rule (Snakemake's params trigger)
    log:
        f"logs/{DATASET}/propagation_{{model}}.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        "../scripts/propagation.py"
