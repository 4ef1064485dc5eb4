rule locality:
    input:
        checkpoint=rules.train.output.checkpoint,
        test=dataset_file("test"),
        attack=rules.merge_attack.output.out,
    output:
        out=f"{RESULTS}/locality/{{model}}.nc",
    params:
        settings=stage_settings("locality"),
    log:
        f"{LOGS}/locality_{{model}}.log",
    benchmark:
        f"{LOGS}/benchmarks/locality_{{model}}.tsv"
    threads: config["threads"]
    resources:
        gpu=1,
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT
