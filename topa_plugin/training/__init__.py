"""Stage 3, training: TOPA pre-alignment and finetuning through LLaVA's (or transformers') trainer."""
