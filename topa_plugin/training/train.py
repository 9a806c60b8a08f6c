"""TOPA training entry point: ``python -m topa_plugin.training.train`` (torchrun / deepspeed) or ``topa train``.

Arguments follow LLaVA's ``train.py`` (``ModelArguments``/``DataArguments``/``TrainingArguments``
through ``HfArgumentParser``) plus TOPA's own; ``--config x.yaml`` supplies defaults that later
command-line flags override. Training runs through LLaVA's trainer when llava imports
(``topa_plugin.training.llava_compat``), else through ``transformers.Trainer``.

Recipe (docs/method.md section 5): the LLM is frozen (bf16 with ``--bf16`` on an accelerator,
fp32 on CPU), the TOPA adapter trains in fp32 with AdamW betas (0.9, 0.95); weight decay applies,
as in the release, to every parameter with 2 or more dimensions: the matrices and the per-head
gates ``gate1``/``gate2`` (``--decay_gates False`` exempts the gates), not biases or 1-D parameters.
The learning rate warms up linearly, then follows a half cosine to 0; ``--base_learning_rate`` sets
``lr = blr * effective_batch / 256`` as the release does.

Launchers: plain, ``torchrun`` (one or several nodes) or ``deepspeed`` with ``configs/zero2.json`` /
``zero3.json`` (checked against the flags before the model loads, ``deepspeed_config.py``). On a
host without GPUs ``--use_cpu`` defaults to True, so the same commands run on CPU (gloo).
Whatever the launcher, ``main`` first runs the pre-flight (``preflight.py``): flags that cannot work
stop every rank with one ``<prog>: error: <message>`` line on stderr and exit status 2, before the
model loads.

``--bits 8|4`` loads the frozen LLM's linear layers through bitsandbytes (``topa_plugin.quantization``);
with ``--lora_r`` that is QLoRA: peft's k-bit preparation, LoRA in fp32.

Checkpoints hold only trainables (``adapter_model.safetensors``, ``lora_model.safetensors`` with
LoRA) plus optimizer/scheduler/RNG/trainer state; the frozen LLM is never written. The final
output directory loads with ``TopaForCausalLM.from_pretrained``; after LoRA finetuning on a
full-precision LLM the LoRA weights are merged and the LLM is saved inside it (``base/``); on a
quantized LLM the LoRA stays unmerged beside the adapter (``trainer.save_final`` says why).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
import transformers

from topa_plugin.training.arguments import DataArguments, LaunchError, ModelArguments, TrainingArguments
from topa_plugin.training.preflight import preflight
from topa_plugin.training.resume import resume_checkpoint
from topa_plugin.training.trainer import EpochSetter, save_final, topa_trainer_class
from topa_plugin.utils.errors import INPUT_ERRORS

logger = logging.getLogger(__name__)


def _llm_dtype(training_args: TrainingArguments) -> torch.dtype:
    """bf16/fp16 for the frozen LLM when asked for on an accelerator; fp32 on CPU."""
    if training_args.device.type == "cpu":
        return torch.float32
    if training_args.bf16:
        return torch.bfloat16
    return torch.float16 if training_args.fp16 else torch.float32


def build_processor(model_args: ModelArguments):
    from topa_plugin.processing import TopaProcessor

    if model_args.init_from:
        return TopaProcessor.from_pretrained(model_args.init_from)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    return TopaProcessor(tokenizer, max_feats=model_args.max_feats)


def build_dataset(data_args: DataArguments, processor, seed: int = 0, output_dir: str | None = None,
                  main_process: bool = True):
    """The training dataset; with ``output_dir``, TextVid rejects and the start-up scan cache go beside/into it
    (both written by the main process only)."""
    from topa_plugin.features.writer import rejects_path
    from topa_plugin.training.samples import DataError
    from topa_plugin.training.textvid_dataset import TextVidDataset
    from topa_plugin.training.videoqa_dataset import VideoQADataset

    common = {"max_seq_len": data_args.max_seq_len, "answer_balance": data_args.answer_balance,
              "check_lengths": data_args.check_lengths, "overlong": data_args.overlong}
    if data_args.task == "pretrain":
        out = Path(output_dir) if output_dir else None
        dataset = TextVidDataset
        specific = {"noise_variance": data_args.noise_variance, "question_mark": data_args.question_mark,
                    "skip_invalid": data_args.skip_invalid, "rejects": out and rejects_path(out),
                    "scan_cache": out and out / "textvid-scan.json", "main_process": main_process}
    else:
        if data_args.skip_invalid:
            raise DataError("--skip_invalid applies to TextVid pretraining (--task pretrain) only")
        dataset, specific = VideoQADataset, {"layout": data_args.layout, "feature_fps": data_args.feature_fps}
    chosen = {k: v for k, v in {**common, **specific}.items() if v is not None}
    return dataset(data_args.data_path, data_args.feature_folder, processor, seed=seed, **chosen)


def lora_targets(llm, names: str) -> list[str]:
    """The comma-separated LoRA target names, each of which must name modules of ``llm``.

    peft only fails when no name matches, so a family with fused projections (Phi3's ``qkv_proj``)
    would otherwise get LoRA on ``o_proj`` alone without a word.
    """
    targets = [m.strip() for m in names.split(",") if m.strip()]
    leaves = {name.rsplit(".", 1)[-1] for name, _ in llm.named_modules()}
    missing = [m for m in targets if m not in leaves]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in llm.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise ValueError(f"--lora_target_modules: {', '.join(missing)} name no module of "
                         f"{llm.config.model_type}; its linear layers are: {', '.join(linear)}")
    return targets


def build_model(model_args: ModelArguments, feature_dim: int, processor, dtype: torch.dtype, device=None):
    """A fresh TOPA model on the frozen LLM, or the one in ``--init_from``; LoRA on top if asked.

    With ``--bits 8|4`` the LLM loads quantized straight onto ``device`` (bitsandbytes models cannot move).
    """
    from topa_plugin.configuration import TopaConfig
    from topa_plugin.modeling import TopaForCausalLM, load_llm

    quantization = model_args.quantization
    device = device if quantization.enabled else None
    if model_args.init_from:
        model = TopaForCausalLM.from_pretrained(model_args.init_from, torch_dtype=dtype, quantization=quantization,
                                                device=device)
        base = Path(model_args.init_from) / model.config.base_model_name_or_path
        if base.exists():  # e.g. a self-contained "base": the new directory must still find it
            model.config.base_model_name_or_path = str(base.resolve())
        if model.config.feature_dim != feature_dim:
            raise ValueError(f"--init_from {model_args.init_from} expects {model.config.feature_dim}-d features, "
                             f"the feature folder has {feature_dim}-d")
        model.train()
    else:
        llm = load_llm(model_args.model_name_or_path, dtype, quantization, device)
        config = TopaConfig(text_config=llm.config, base_model_name_or_path=model_args.model_name_or_path,
                            feature_dim=feature_dim, max_feats=model_args.max_feats, adapter_len=model_args.adapter_len,
                            adapter_layer=model_args.adapter_layer, video_bias_init=model_args.video_bias_init)
        model = TopaForCausalLM(config, llm=llm)
    model.processor = processor
    if model_args.lora_r:
        import peft

        targets = lora_targets(model.llm, model_args.lora_target_modules)
        lora = peft.LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                               lora_dropout=model_args.lora_dropout, target_modules=targets)
        if quantization.enabled:  # QLoRA: norms/embeddings to fp32, all frozen; checkpointing stays the Trainer's flag
            model.llm = peft.prepare_model_for_kbit_training(model.llm, use_gradient_checkpointing=False)
        model.llm = peft.get_peft_model(model.llm, lora)
        for name, param in model.llm.named_parameters():
            if "lora_" in name:
                param.data = param.data.float()  # trainables in fp32 (autocast handles the matmuls)
    return model


def init_deepspeed_comm(training_args: TrainingArguments) -> None:
    """Hand accelerate's process group to DeepSpeed before the LLM loads.

    Under ZeRO-3, ``from_pretrained`` builds the model inside ``deepspeed.zero.Init``, which needs
    DeepSpeed's communication layer; accelerate only sets that up later, with the engine.
    """
    if training_args.deepspeed and torch.distributed.is_initialized():
        import deepspeed

        deepspeed.init_distributed(dist_backend=training_args.ddp_backend)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments, callbacks=None):
    """Build everything, train (resuming from the newest checkpoint in output_dir), save; returns the trainer."""
    from topa_plugin.training.collator import TopaCollator

    logger.info("effective batch %d, learning rate %.3g", training_args.effective_batch_size, training_args.learning_rate)
    transformers.set_seed(training_args.seed)
    processor = build_processor(model_args)
    dataset = build_dataset(data_args, processor, training_args.seed, training_args.output_dir,
                            main_process=training_args.process_index == 0)
    init_deepspeed_comm(training_args)
    model = build_model(model_args, dataset.feature_dim, processor, _llm_dtype(training_args), training_args.device)
    logger.info("trainable parameters: %d", sum(p.numel() for p in model.parameters() if p.requires_grad))
    pad_id = processor.tokenizer.pad_token_id
    trainer = topa_trainer_class(training_args.trainer_backend)(
        model=model, args=training_args, train_dataset=dataset, callbacks=[EpochSetter(dataset), *(callbacks or [])],
        data_collator=TopaCollator(pad_token_id=processor.eos_id if pad_id is None else pad_id),
    )
    resume = resume_checkpoint(training_args.output_dir, training_args.resume_from_checkpoint)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    save_final(trainer, training_args.output_dir)
    return trainer


def main(argv: list[str] | None = None, prog: str = "python -m topa_plugin.training.train") -> int:
    """Train; flags the pre-flight refuses and bad input found later (``utils.errors.INPUT_ERRORS``) print
    ``<prog>: error: <message>`` and return 2 (``prog`` names the entry point the user typed: ``topa train``
    or the module run by torchrun / deepspeed)."""
    try:
        arguments = preflight(list(sys.argv[1:] if argv is None else argv), prog)
    except LaunchError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(*arguments)
    except INPUT_ERRORS as err:  # bad data found once it is read: the same report, on every entry point
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
