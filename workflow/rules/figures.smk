rule figures:
    localrule: True  # small: runs on the submitting machine under a cluster executor
    input:
        test=dataset_file("test"),
        attack=each_model("{results}/attack/{model}.nc"),
        propagation=each_model("{results}/propagation/{model}.nc"),
        locality=each_model("{results}/locality/{model}.nc"),
    output:
        locality=report(
            f"{RESULTS}/figures/locality.png",
            caption="../report/locality.rst",
            category="Locality",
        ),
        depth=report(
            f"{RESULTS}/figures/pm_depth.png",
            caption="../report/pm_depth.rst",
            category="Propagation maps",
        ),
        average=[
            report(
                f"{RESULTS}/figures/{model}/average_pm.png",
                caption="../report/average_pm.rst",
                category="Propagation maps",
                subcategory=model,
            )
            for model in MODELS
        ],
        # Figure 1a for the first figures.examples successful attacks (a placeholder when fewer)
        grid=[
            report(
                f"{RESULTS}/figures/{model}/pm_grid_{k}.png",
                caption="../report/pm_grid.rst",
                category="Propagation maps",
                subcategory=model,
            )
            for model in MODELS
            for k in range(config["figures"]["examples"])
        ],
    params:
        settings=stage_settings("figures"),
        out=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/figures.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT


rule locality_figures:
    localrule: True  # small: runs on the submitting machine under a cluster executor
    input:
        test=dataset_file("test"),
        locality=each_model("{results}/locality/{model}.nc"),
        vulnerability=each_model("{results}/vulnerability/{model}.nc"),
    output:
        overlay=report(
            f"{RESULTS}/figures/receptive_fields.png",
            caption="../report/receptive_fields.rst",
            category="Locality",
        ),
        erf=report(f"{RESULTS}/figures/erf.png", caption="../report/erf.rst", category="Locality"),
        table=report(
            f"{RESULTS}/figures/locality_table.html",
            caption="../report/locality_table.rst",
            category="Locality",
        ),
        table_csv=f"{RESULTS}/figures/locality_table.csv",
        maps=[
            report(
                f"{RESULTS}/figures/{model}/vulnerability_maps.png",
                caption="../report/vulnerability_maps.rst",
                category="Locality",
                subcategory=model,
            )
            for model in MODELS
        ],
    params:
        settings=stage_settings("locality_figures"),
        out=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        f"{LOGS}/locality_figures.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT


rule summary:
    localrule: True
    input:
        metrics=each_model("{results}/metrics/{model}.json"),
        attack=each_model("{results}/attack/{model}.nc"),
        propagation=each_model("{results}/propagation/{model}.nc"),
        locality=each_model("{results}/locality/{model}.nc"),
        comparison=[f"{RESULTS}/plots/comparison.json"] if FURTHER_ATTACKS else [],
    output:
        summary=f"{RESULTS}/summary.json",  # numbers only: the DVC metrics
        provenance=f"{RESULTS}/provenance.json",
        # for `dvc plots` (dvc.yaml) and the report
        models_csv=f"{RESULTS}/plots/models.csv",
        locality_csv=f"{RESULTS}/plots/locality.csv",
        table=report(f"{RESULTS}/plots/metrics.html", caption="../report/metrics.rst", category="Metrics"),
    params:
        settings=stage_settings("summary"),
    log:
        f"{LOGS}/summary.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        STAGE_SCRIPT
