"""Training throughput of SALAD: images/s and peak memory per configuration, side by side in one run.

Each configuration runs real ``Salad.training_step``s (generator, center and discriminator updates, all five
losses, pre-processing included) through a Lightning ``Trainer`` on batches held in memory, so data
decoding is excluded; the first ``--warmup`` steps are not timed. Peak memory is the process's peak RSS on
CPU (it only grows, so configurations are listed in the order they ran) and ``max_memory_allocated`` on CUDA.

Usage:
    python benchmarks/train_throughput.py                           # CPU: 64 and 256 px, fp32 / bf16 / channels-last
    python benchmarks/train_throughput.py --device cuda --sizes 256 --batch-size 64 --steps 50 --compile
"""

import argparse
import resource
import time
from dataclasses import dataclass

import torch
from anomalib.data import ImageBatch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader, Dataset

from anomalib_salad import Salad


@dataclass(frozen=True)
class Variant:
    """One configuration: Lightning precision, memory format, compilation."""

    name: str
    precision: str = "32-true"
    channels_last: bool = False
    compile: bool = False


class InMemoryBatches(Dataset):
    """``steps`` copies of one random RGB batch, as anomalib's loaders deliver them."""

    def __init__(self, steps: int, batch_size: int, size: int) -> None:
        self.steps = steps
        labels = torch.zeros(batch_size, dtype=torch.bool)
        self.batch = ImageBatch(image=torch.rand(batch_size, 3, size, size), gt_label=labels)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> ImageBatch:
        return self.batch


class StepTimer(Callback):
    """Wall time of the steps after the warm-up, synchronising the device at both ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start = warmup, 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, idx: int) -> None:
        """Start the clock at the first timed step."""
        del trainer, pl_module, batch
        if idx == self.warmup:
            _sync()
            self.start = time.perf_counter()

    def seconds(self) -> float:
        """Seconds since the first timed step started."""
        _sync()
        return time.perf_counter() - self.start


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_mib(device: str) -> float:
    """Peak GPU allocation, or the process's peak resident memory on CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    variant: Variant, size: int, batch_size: int, steps: int, warmup: int, device: str, model_kwargs: dict
) -> dict:
    """Train ``warmup + steps`` steps and return images/s and peak memory."""
    seed_everything(0)
    model = Salad(image_size=size, **model_kwargs)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if variant.compile:
        for name in ("encoder", "decoder", "restoration_decoder", "image_discriminator", "feature_discriminator"):
            setattr(model.model, name, torch.compile(getattr(model.model, name)))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer(warmup)
    trainer = Trainer(accelerator=device, devices=1, precision=variant.precision, max_epochs=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[timer], num_sanity_val_steps=0)
    loader = DataLoader(InMemoryBatches(warmup + steps, batch_size, size), batch_size=None, collate_fn=lambda b: b)
    trainer.fit(model, train_dataloaders=loader)
    seconds = timer.seconds()
    return {"images_per_s": steps * batch_size / seconds, "peak_mib": peak_memory_mib(device)}


def main() -> None:
    """Run every variant at every size and print one table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of the networks")
    parser.add_argument("--narrow", action="store_true", help="32..256 channels, latent 128 (the CPU demo widths)")
    args = parser.parse_args()

    model_kwargs = {"base_channels": 32, "max_channels": 256, "latent_dim": 128} if args.narrow else {}
    variants = [Variant("fp32"), Variant("fp32 channels-last", channels_last=True), Variant("bf16-mixed", "bf16-mixed")]
    if args.compile:
        variants.append(Variant("bf16-mixed compiled", "bf16-mixed", compile=True))
    print(f"device={args.device} batch={args.batch_size} steps={args.steps} (+{args.warmup} warm-up) "
          f"threads={torch.get_num_threads()} widths={'narrow' if args.narrow else 'paper'}")
    if args.device == "cuda":
        print("gpu:", torch.cuda.get_device_name())
    print(f"{'size':>5} {'variant':<22} {'images/s':>10} {'x fp32':>7} {'peak MiB':>9}")
    for size in args.sizes:
        baseline = None
        for variant in variants:
            result = measure(variant, size, args.batch_size, args.steps, args.warmup, args.device, model_kwargs)
            baseline = baseline or result["images_per_s"]
            print(f"{size:>5} {variant.name:<22} {result['images_per_s']:>10.1f} "
                  f"{result['images_per_s'] / baseline:>7.2f} {result['peak_mib']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
