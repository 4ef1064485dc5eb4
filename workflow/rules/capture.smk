rule capture:
    input:
        checkpoint=rules.train.output.checkpoint,
        test=dataset_file("test"),
        attack=rules.merge_attack.output.out,
    output:
        out=directory(f"{RESULTS}/cubes/{{model}}"),
    params:
        settings=stage_settings("capture"),
    log:
        f"{LOGS}/capture_{{model}}.log",
    benchmark:
        f"{LOGS}/benchmarks/capture_{{model}}.tsv"
    threads: config["threads"]
    resources:
        gpu=1,
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT
