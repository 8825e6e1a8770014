rule export_onnx:
    input:
        model=f"{RESULTS}/runs/{{run}}/model.pt",
        data=DATA_CACHE,
    output:
        onnx=f"{RESULTS}/deploy/{{run}}/model.onnx",
        int8=f"{RESULTS}/deploy/{{run}}/model.int8.onnx" if config["export"]["int8"] else [],
        report=f"{RESULTS}/deploy/{{run}}/export.json",
    params:
        root=lambda wildcards, input: os.path.dirname(input.data),
        options=data_options_args(config),
        test_images=config["export"]["test_images"],
        int8=lambda wildcards, output: (
            f"--int8-out {output.int8} --calibration-size {config['export']['calibration_size']}"
            if config["export"]["int8"]
            else ""
        ),
    log:
        f"{LOGS}/export/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmark/export/{{run}}.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m rckd export --model {input.model} --data-root {params.root} {params.options} --out {output.onnx} "
        "{params.int8} --test-images {params.test_images} --threads {threads} --report {output.report} > {log} 2>&1"


rule bench:
    input:
        exports=[f"{RESULTS}/deploy/{run.name}/export.json" for run in PLAN.exports],
        # Waiting for every experiment keeps training jobs off the cores while latency is measured.
        summaries=[f"{RESULTS}/{name}/summary.csv" for name in PLAN.experiments],
    output:
        csv=report(
            f"{RESULTS}/deploy/latency.csv",
            caption="../report/latency_csv.rst",
            category="deploy",
            labels={"output": "latency table"},
        ),
        png=report(
            f"{RESULTS}/deploy/latency.png",
            caption="../report/latency.rst",
            category="deploy",
            labels={"output": "latency chart"},
        ),
    params:
        models=" ".join(f"{RESULTS}/deploy/{run.name}/model.onnx" for run in PLAN.exports),
        batch_sizes=" ".join(str(size) for size in config["bench"]["batch_sizes"]),
        bench=config["bench"],
    log:
        f"{LOGS}/bench.log",
    benchmark:
        f"{LOGS}/benchmark/bench.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: config["bench"]["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m rckd bench --models {params.models} --batch-sizes {params.batch_sizes} "
        "--threads {threads} --warmup {params.bench[warmup]} "
        "--min-iters {params.bench[min_iters]} --min-seconds {params.bench[min_seconds]} "
        "--out {output.csv} --plot {output.png} > {log} 2>&1"
