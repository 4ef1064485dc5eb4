rule figures:
    localrule: True  # small: runs on the submitting machine under a cluster executor
    input:
        test=dataset_file("test"),
        attack=per_model("{results}/attack/{model}.nc").values(),
        propagation=per_model("{results}/propagation/{model}.nc").values(),
        locality=per_model("{results}/locality/{model}.nc").values(),
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
            report(path, caption="../report/average_pm.rst", category="Propagation maps", subcategory=model)
            for model, path in per_model("{results}/figures/{model}/average_pm.png").items()
        ],
        # Figure 1a for the first figures.examples successful attacks (a placeholder when fewer)
        grid=[
            report(f"{RESULTS}/figures/{model}/pm_grid_{k}.png", caption="../report/pm_grid.rst",
                   category="Propagation maps", subcategory=model)
            for model in MODELS
            for k in range(config["figures"]["examples"])
        ],
    params:
        settings=config["figures"],  # a changed setting reruns the rule (Snakemake's params trigger)
        models=MODELS,
        attack=per_model("{results}/attack/{model}.nc"),
        propagation=per_model("{results}/propagation/{model}.nc"),
        locality=per_model("{results}/locality/{model}.nc"),
        out_dir=lambda wildcards, output: os.path.dirname(output.locality),
    log:
        f"logs/{DATASET}/figures.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        "../scripts/figures.py"


rule locality_figures:
    localrule: True  # small: runs on the submitting machine under a cluster executor
    input:
        test=dataset_file("test"),
        locality=per_model("{results}/locality/{model}.nc").values(),
        vulnerability=per_model("{results}/vulnerability/{model}.nc").values(),
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
            report(path, caption="../report/vulnerability_maps.rst", category="Locality", subcategory=model)
            for model, path in per_model("{results}/figures/{model}/vulnerability_maps.png").items()
        ],
    params:
        settings=config["figures"],  # a changed setting reruns the rule (Snakemake's params trigger)
        models=MODELS,
        locality=per_model("{results}/locality/{model}.nc"),
        vulnerability=per_model("{results}/vulnerability/{model}.nc"),
        out_dir=lambda wildcards, output: os.path.dirname(output.overlay),
    log:
        f"logs/{DATASET}/locality_figures.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        "../scripts/locality_figures.py"


rule summary:
    localrule: True
    input:
        metrics=per_model("{results}/metrics/{model}.json").values(),
        attack=per_model("{results}/attack/{model}.nc").values(),
        propagation=per_model("{results}/propagation/{model}.nc").values(),
        locality=per_model("{results}/locality/{model}.nc").values(),
    output:
        summary=f"{RESULTS}/summary.json",
        # for `dvc plots` (dvc.yaml) and the report
        models_csv=f"{RESULTS}/plots/models.csv",
        locality_csv=f"{RESULTS}/plots/locality.csv",
        table=report(f"{RESULTS}/plots/metrics.html", caption="../report/metrics.rst", category="Metrics"),
    params:
        metrics=per_model("{results}/metrics/{model}.json"),
        attack=per_model("{results}/attack/{model}.nc"),
        propagation=per_model("{results}/propagation/{model}.nc"),
        locality=per_model("{results}/locality/{model}.nc"),
    log:
        f"logs/{DATASET}/summary.log",
    conda:
        "../envs/onepixel.yaml"
    script:
        "../scripts/summary.py"
