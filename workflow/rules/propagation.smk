rule propagation:
    input:
        cubes=rules.capture.output.out,
    output:
        out=f"{RESULTS}/propagation/{{model}}.nc",
    params:
        settings=stage_settings("propagation"),
    log:
        f"{LOGS}/propagation_{{model}}.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT
