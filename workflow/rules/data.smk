if not CIFAR10_ROOT:  # with dataset.root, CIFAR-10 is read from there: no download

    rule download_cifar10:
        localrule: True  # needs the network, which cluster compute nodes often lack
        output:
            out=directory("resources/raw/cifar10/cifar-10-batches-py"),
        log:
            "logs/download_cifar10.log",
        conda:
            "../envs/onepixel.yaml"
        script:
            STAGE_SCRIPT


rule prepare_data:
    localrule: True  # seconds of I/O: runs on the submitting machine under a cluster executor
    input:
        raw=prepare_inputs,
    output:
        train="resources/datasets/{dataset}/train.nc",
        test="resources/datasets/{dataset}/test.nc",
    params:
        settings=stage_settings("prepare_data"),
    log:
        "logs/{dataset}/prepare_data.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT
