"""Train an SCNet in PyTorch Lightning, through the fast training forms (``fast_train=True``).

Any trainer gets the fast forms the same way: ``fast_train=True`` is a keyword of every SCNet builder, so
``scnet.create_model`` (and ``timm.create_model``) return a model whose SC layers train faster and in less memory
than the reference forms, with the reference's results up to float rounding.

    python examples/lightning_train.py --data fashion_mnist --max-steps 200
    python examples/lightning_train.py --data wds:/data/shards --model scnet50 --image-size 224   # shards: scnet shard

The data comes from scnet's own datasets (``scnet.data.build_datasets``), so every ``--data`` of ``scnet train``
works here too; a map-style set is shuffled by the DataLoader (and split over processes by Lightning's sampler), a
stream of shards (``wds:``) by its own seeded order per epoch, each process reading its own shards (with more than
one process, use shards that split evenly, as ``scnet shard`` writes them: every process must take as many batches).
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

import scnet
from scnet.data import build_datasets


class SCNetClassifier(L.LightningModule):
    """An SCNet classifier: cross-entropy, SGD with Nesterov momentum, the learning rate decaying linearly to 0."""

    def __init__(self, model: str, num_classes: int, in_chans: int, lr: float = 0.05, max_steps: int = 100,
                 fast_train: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = scnet.create_model(model, num_classes=num_classes, in_chans=in_chans, fast_train=fast_train)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log_dict({"val_loss": F.cross_entropy(logits, labels), "val_acc": (logits.argmax(1) == labels).float().mean()},
                      prog_bar=True)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / max(hp.max_steps, 1)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class ShardEpochs(L.Callback):
    """Tells a stream of shards which epoch it is (its order and augmentation are seeded by it)."""

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        dataset = trainer.train_dataloader.dataset
        if isinstance(dataset, IterableDataset):
            dataset.epoch = trainer.current_epoch


def loaders(data: str, batch_size: int, image_size: int, limit_train: Optional[int], limit_val: Optional[int],
            workers: int, rank: int = 0, world: int = 1) -> tuple[DataLoader, DataLoader, int, int]:
    """(train, val, classes, channels) of any dataset ``scnet train`` reads."""
    train, val, info = build_datasets(data, limit_train=limit_train, limit_val=limit_val, image_size=image_size)
    shuffle = not isinstance(train, IterableDataset)
    for ds in (train, val):
        if isinstance(ds, IterableDataset):  # shards: this process's own
            ds.rank, ds.world = rank, world
    make = lambda ds, shuffled: DataLoader(ds, batch_size=batch_size, shuffle=shuffled, num_workers=workers,  # noqa: E731
                                           drop_last=shuffled)
    return make(train, shuffle), make(val, False), info.num_classes, info.in_chans


def main(argv: Optional[Sequence[str]] = None) -> SCNetClassifier:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="scnet_demo")
    p.add_argument("--data", default="fashion_mnist", help="any --data of scnet train")
    p.add_argument("--image-size", type=int, default=224, help="crop size of photographs (image folders, shards)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-val", type=int)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--reference", action="store_true", help="train the reference forms (fast_train=False)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="32-true", help="Lightning's: 32-true, bf16-mixed, 64-true, ...")
    args = p.parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    trainer = L.Trainer(max_steps=args.max_steps, precision=args.precision, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        deterministic=True, num_sanity_val_steps=0, callbacks=[ShardEpochs()])
    train, val, classes, channels = loaders(args.data, args.batch_size, args.image_size, args.limit_train, args.limit_val,
                                            args.workers, trainer.global_rank, trainer.world_size)
    module = SCNetClassifier(args.model, classes, channels, args.lr, args.max_steps, fast_train=not args.reference)
    trainer.fit(module, train, val)
    return module


if __name__ == "__main__":
    main()
