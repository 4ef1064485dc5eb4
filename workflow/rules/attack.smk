rule attack:
    input:
        checkpoint=rules.train.output.checkpoint,
        test=dataset_file("test"),
    output:
        f"{RESULTS}/attack/{{model}}.nc",
    log:
        f"logs/{DATASET}/attack_{{model}}.log",
    threads: workflow.cores
    resources:
        gpu=1,
    conda:
        "../envs/onepixel.yaml"
    script:
        "../scripts/attack.py"
