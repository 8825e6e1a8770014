def evaluate_inputs(wildcards):
    run = RUNS[wildcards.run]
    inputs = {"model": f"{run.dir}/model.pt", "data": DATA_CACHE}
    if run.teacher_run:
        inputs["teacher"] = f"{run.teacher_run.dir}/model.pt"
    return inputs


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        f"{RESULTS}/runs/{{run}}/eval.json",
    params:
        teacher=lambda wildcards, input: f"--teacher {input.teacher}" if "teacher" in input.keys() else "",
        root=config["data"]["root"],
        batch_size=config["evaluate"]["batch_size"],
        device=config["evaluate"]["device"],
    log:
        f"{LOGS}/evaluate/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmark/evaluate/{{run}}.tsv"
    conda:
        "../../envs/rckd.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "{RCKD} evaluate --model {input.model} {params.teacher} --data-root {params.root} "
        "--batch-size {params.batch_size} --device {params.device} --out {output} > {log} 2>&1"
