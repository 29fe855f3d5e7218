"""Amortised guide: an encoder network maps each example to the posterior of its local latents.

Instead of one set of variational parameters per data point (an autoguide over local
latents), an encoder ``q_phi(z_i | x_i)`` is shared by all examples (Kingma & Welling, 2014).
That trains on minibatches, since only the batch's examples are encoded and the engine
scales their sites by ``N / batch_size`` like the model's, and it encodes data it has never
seen, which is what held-out ELBO and importance-weighted likelihoods need.

The guide works for any model that provides the encoder protocol:

- ``model.make_encoder(hidden_sizes)`` returns an ``nn.Module`` whose ``forward(**data)``
  returns ``{site name: distribution}`` for the model's local latent sites, each with batch
  shape ``(N,)`` (the data plate) and its event dims declared (``.to_event``);
- the model's latent sites lie in the data plate ``model.data_spec.plate`` (default
  ``"data"``) at dim ``model.local_plate_dim`` (default -1), and it has no other latent sites.

The registered :class:`~pyro_models.models.vae.VAE` and
:class:`~pyro_models.models.vae.CVAE` provide it.

Examples
--------
>>> import torch
>>> from pyro_models import guides
>>> from pyro_models.models.vae import VAE
>>> guide = guides.get("amortized")(VAE(in_features=16, latent_dim=2), hidden_sizes=(32,))
>>> guide(x=torch.zeros(5, 16))["z"].shape
torch.Size([5, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro
from pyro.nn import PyroModule
from torch import Tensor, nn

from . import needs_method, register

__all__ = ["AmortizedGuide", "amortized"]


class AmortizedGuide(PyroModule):
    """Sample each local latent site from an encoder's distribution, inside the data plate.

    Parameters
    ----------
    encoder : nn.Module
        ``encoder(**data) -> {site: distribution}``, each with batch shape (N,).
    plate : str
        Name of the model's data plate.
    dim : int
        That plate's dim (negative).

    Notes
    -----
    The plate's size is the number of examples given, so a minibatch (a slice of the data,
    as :func:`pyro_models.fit` makes them) is encoded as such; the engine's ``N / batch``
    scaling applies to these sites like to the model's.
    """

    def __init__(self, encoder: nn.Module, *, plate: str = "data", dim: int = -1) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim >= 0:
            raise ValueError(f"dim must be a negative int, got {dim!r}")
        self.encoder = encoder
        self.plate = plate
        self.dim = dim

    def forward(self, **data: Any) -> dict[str, Tensor]:
        """Draw every local latent site given the data.

        Parameters
        ----------
        **data
            The model's keyword arguments (its observed examples included).

        Returns
        -------
        dict of str to Tensor
            The sampled value of each site, ``(N, *event_shape)`` (more leading dims under an
            outer plate such as vectorised particles).
        """
        dists = self.encoder(**data)
        if not isinstance(dists, dict) or not dists:
            raise TypeError(
                f"the encoder must return a non-empty dict of site name -> distribution, got {type(dists).__name__}"
            )
        sizes = {name: d.batch_shape[self.dim] if len(d.batch_shape) >= -self.dim else None
                 for name, d in dists.items()}
        n = next(iter(sizes.values()))
        if n is None or any(s != n for s in sizes.values()):
            shapes = {name: tuple(d.batch_shape) for name, d in dists.items()}
            raise ValueError(
                f"the encoder's distributions must share the data plate's size at batch dim {self.dim}; "
                f"got batch shapes {shapes}"
            )
        with pyro.plate(self.plate, n, dim=self.dim):
            return {name: pyro.sample(name, d) for name, d in dists.items()}


@register("amortized", description="Encoder network q(z_i | x_i) for models with local latents (VAEs); minibatches.",
          check=needs_method("make_encoder", "an encoder network (a make_encoder(hidden_sizes) method, "
                                             "as the registered 'vae' and 'cvae' have)"))
def amortized(model: Callable[..., Any], *, hidden_sizes: Sequence[int] | None = None) -> AmortizedGuide:
    """Amortised encoder guide for models that provide ``make_encoder`` (the VAEs).

    Parameters
    ----------
    model : callable
        A model with ``make_encoder(hidden_sizes)`` (see the module docstring).
    hidden_sizes : sequence of int, optional
        Encoder hidden widths; ``None`` lets the model choose (the VAEs mirror the decoder).

    Returns
    -------
    AmortizedGuide

    Raises
    ------
    TypeError
        The model has no encoder.
    """
    make = getattr(model, "make_encoder", None)
    if not callable(make):
        name = getattr(model, "registered_name", None) or type(model).__name__
        if not isinstance(model, nn.Module):
            name = getattr(model, "__qualname__", name)
        raise TypeError(
            f"guide 'amortized' needs a model with an encoder (a make_encoder(hidden_sizes) method, as "
            f"the registered 'vae' and 'cvae' have); model {name!r} has none. Use an autoguide such "
            f"as guide='normal' instead"
        )
    encoder = make(hidden_sizes)
    spec = getattr(model, "data_spec", None)
    plate = getattr(spec, "plate", None) or "data"
    return AmortizedGuide(encoder, plate=plate, dim=getattr(model, "local_plate_dim", -1))
