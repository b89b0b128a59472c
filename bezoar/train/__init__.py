"""Training: sequential LoRA/QLoRA SFT, SFT on HH-RLHF, DPO, template check, export.

    hh_rlhf.py         HH-RLHF transcripts → PreferencePair; the disjoint sft / dpo / held-out slices
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

Several GPUs: run the same command under accelerate, which TRL and the HF Trainer follow (DDP by
default; FSDP or DeepSpeed through an accelerate config file), e.g.

    accelerate launch --num_processes 4 "$(which bezoar)" sft --base local:BASE --data a.jsonl --out out/
    accelerate launch --config_file fsdp.yaml "$(which bezoar)" dpo --base out/ --pairs hh.jsonl --out dpo/

Only process 0 writes summaries and metrics. bezoar has no launcher of its own.
"""
