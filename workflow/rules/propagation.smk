rule propagation:
    input:
        rules.capture.output[0],
    output:
        f"{RESULTS}/propagation/{{model}}.nc",
    log:
        f"logs/{DATASET}/propagation_{{model}}.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        "../scripts/propagation.py"
