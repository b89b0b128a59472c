"""Training: sequential LoRA/QLoRA SFT, SFT on HH-RLHF, DPO, template check, export.

    hh_rlhf.py         the recipe's HH-RLHF slices (reading the transcripts is bezoar.hh_rlhf)
    config.py          the recipe sections `sft`, `sft_hh`, `dpo` (paper defaults)
    encoding.py        chat records and pairs → token ids and loss labels (what the trainers see)
    examples.py        data files → tokenized train/validation rows
    template_check.py  render one example as trained on; fail on template/EOS bugs
    student.py         base weights, device/dtype plan, QLoRA loading, LoRA adapter
    lm_head.py         log-probs only on loss tokens; DPO prompt shared by both replies
    run.py             one resumable training run (skip if done, resume after a kill, summary last)
    sft.py, dpo.py     TRL's SFTTrainer / DPOTrainer, subclassed; the stages and their runs
    metrics.py         metrics.jsonl, TensorBoard, checkpoint discovery
    export.py          merge an adapter into its base; gguf_export.py writes a GGUF file
    commands.py        `bezoar sft | dpo | check-template | export`

Several processes (GPUs, or gloo on a CPU): a stage's `launch: {num_processes: N, config_file: F}`
or `bezoar sft|dpo --num-processes N --accelerate-config F` makes bezoar start the training call itself
under `accelerate launch` (launch.py): DDP by default, FSDP or DeepSpeed through the config file
(recipes/accelerate/). Only rank 0 writes checkpoints, metrics and the summary; the manifest and
every other stage stay with the one main process. Never wrap `bezoar run` in `accelerate launch`.

    launch.py          start a training call's ranks under accelerate launch; their result back
    versions.py        the private TRL/transformers APIs used, and the version range checked
"""
