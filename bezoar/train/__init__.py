"""Training: sequential LoRA/QLoRA SFT, SFT on HH-RLHF, DPO, export."""
