rule prepare_data:
    output:
        DATA_CACHE,
    params:
        download="--download" if config["data"]["download"] else "",
        options=data_options_args(),
        root=config["data"]["root"],
    log:
        f"{LOGS}/prepare.log",
    benchmark:
        f"{LOGS}/benchmark/prepare.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "{RCKD} prepare --dataset {DATASET} --root {params.root} {params.download} {params.options} > {log} 2>&1"
