"""Models by config: our CIFAR ResNets, torchvision's ImageNet ResNets (torchvision is imported only
for those: its import costs a CIFAR-10 run seconds of start-up)."""

from __future__ import annotations

from omegaconf import OmegaConf
from torch import nn

from sngm_bench.config import CifarResNetConfig
from sngm_bench.errors import UserError
from sngm_bench.models.cifar_resnet import CifarResNet


def build_model(cfg, num_classes: int) -> nn.Module:
    if OmegaConf.get_type(cfg) is CifarResNetConfig:
        if cfg.depth < 8 or (cfg.depth - 2) % 6:
            raise UserError(f"model.depth={cfg.depth} is not 6n+2 (8, 20, 32, 44, 56, 110, ...)")
        if cfg.width < 1:
            raise UserError(f"model.width={cfg.width} must be at least 1")
        return CifarResNet(cfg.depth, cfg.width, num_classes, cfg.batch_norm)
    import torchvision

    resnets = torchvision_resnets()
    if cfg.arch not in resnets:
        raise UserError(f"model.arch={cfg.arch} is not one of torchvision's ResNets ({', '.join(resnets)})")
    return torchvision.models.get_model(cfg.arch, weights=None, num_classes=num_classes,
                                        zero_init_residual=cfg.zero_init_residual)


def torchvision_resnets() -> list[str]:
    """torchvision's ResNet constructors (resnet*, resnext*, wide_resnet*): its models that take the
    config's zero_init_residual; any other constructor stops at it with a TypeError."""
    import torchvision

    return [name for name in torchvision.models.list_models(torchvision.models)
            if torchvision.models.get_model_builder(name).__module__ == torchvision.models.resnet.__name__]
