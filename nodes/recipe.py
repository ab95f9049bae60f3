"""Which settings a T-LoRA Train run trains with, and how to say so.

Two sources for the hyper-parameters (variant, rank, min_rank, optimizer, learning rate): the
model family's reference recipe (``model_kinds.Recipe``, the node's default) or the values set on
the node ("custom"). The rest always follows the family's reference code (model_kinds' module
docstring): the timestep range, gradient-norm clipping and the distilled guidance. A resumed run
follows its checkpoint instead, so files written before a rule changed keep theirs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Mapping

from ..tlora_core import VARIANT_LABELS, TLoRAConfig
from ..tlora_core.trainer import TrainSettings, recipe_from
from . import model_kinds

log = logging.getLogger(__name__)

REFERENCE = "family reference"
CUSTOM = "custom"
CHOICES = (REFERENCE, CUSTOM)
OPTIMIZER_LABELS = {"AdamW": "adamw", "Prodigy": "prodigy"}
_OPTIMIZER_NAMES = {key: label for label, key in OPTIMIZER_LABELS.items()}
PROMPT_GUIDANCE = "prompt"  # metadata value: trained at the guidance the conditioning carried


@dataclass(frozen=True)
class RunRecipe:
    name: str  # "FLUX.1 reference recipe", "custom", ...
    variant: str
    rank: int
    min_rank: int
    optimizer: str
    learning_rate: float
    max_grad_norm: float | None
    first_timestep: int
    guidance: float | None  # None: the conditioning's own
    extra: tuple[tuple[str, Any], ...] = ()  # a checkpoint's betas / weight decay / eps

    @property
    def choice(self) -> str:
        """The recipe input that gives this recipe (only the node's own values are named 'custom')."""
        return CUSTOM if self.name == CUSTOM else REFERENCE

    def settings(self, steps: int, batch_size: int, seed: int, save_every: int) -> TrainSettings:
        return TrainSettings(
            steps=steps, learning_rate=self.learning_rate, batch_size=batch_size, seed=seed, save_every=save_every,
            optimizer=self.optimizer, max_grad_norm=self.max_grad_norm, first_timestep=self.first_timestep,
            **dict(self.extra),
        )

    def metadata(self, settings: TrainSettings) -> dict[str, str]:
        return {
            **settings.recipe(),
            "recipe": self.name,
            "training_guidance": PROMPT_GUIDANCE if self.guidance is None else repr(self.guidance),
        }

    def describe(self) -> str:
        """One line for the node: what this run trains with."""
        clip = "no clipping" if self.max_grad_norm is None else f"grad-norm clip {self.max_grad_norm:g}"
        guidance = "" if self.guidance is None else f", guidance {self.guidance:g}"
        last = self.first_timestep + 999
        return (
            f"{self.name}: {VARIANT_LABELS[self.variant]} rank {self.rank}/{self.min_rank}, "
            f"{_OPTIMIZER_NAMES[self.optimizer]} lr {self.learning_rate:g}, {clip}{guidance}, "
            f"t {self.first_timestep}..{last}"
        )


def resolve(
    model, choice: str | None, variant: str, rank: int, min_rank: int, learning_rate: float,
    optimizer_label: str | None, node: str,
) -> RunRecipe:
    """The run's recipe. ``choice`` None (an API graph from before the recipe input existed)
    means the node's values, as those graphs were written for."""
    choice = CUSTOM if choice is None else choice
    if choice not in CHOICES:
        raise ValueError(f"{node}: recipe {choice!r} is not one of {', '.join(map(repr, CHOICES))}.")
    label = "AdamW" if optimizer_label is None else optimizer_label
    if label not in OPTIMIZER_LABELS:
        raise ValueError(f"{node}: optimizer {label!r} is not one of {', '.join(map(repr, OPTIMIZER_LABELS))}.")
    kind = model_kinds.kind_of(model, node)
    family = kind.recipe
    procedure = dict(
        max_grad_norm=family.max_grad_norm,
        first_timestep=model_kinds.first_timestep(model.get_model_object("model_sampling")),
        guidance=family.guidance if model_kinds.takes_distilled_guidance(model) else None,
    )
    if choice == REFERENCE:
        recipe = RunRecipe(family.name, family.variant, family.rank, family.min_rank, family.optimizer,
                           family.learning_rate, **procedure)
        ignored = [
            f"{name} {mine!r} (used: {used!r})"
            for name, mine, used in (("variant", variant, family.variant), ("rank", rank, family.rank),
                                     ("min_rank", min_rank, family.min_rank),
                                     ("learning_rate", learning_rate, family.learning_rate),
                                     ("optimizer", OPTIMIZER_LABELS[label], family.optimizer))
            if mine != used
        ]
        if ignored:
            log.info("%s: recipe '%s' trains %s with its reference values; the node's %s are not used (set recipe "
                     "to 'custom' to use them).", node, REFERENCE, kind.label, ", ".join(ignored))
        return recipe
    recipe = RunRecipe(CUSTOM, variant, rank, min_rank, OPTIMIZER_LABELS[label], learning_rate, **procedure)
    if recipe.optimizer == "prodigy" and learning_rate <= 0.1:
        log.warning("%s: Prodigy's learning_rate multiplies the step size it finds itself; the reference uses 1.0 "
                    "(this run: %g).", node, learning_rate)
    return recipe


def following(recipe: RunRecipe, checkpoint: Mapping[str, str]) -> RunRecipe:
    """``recipe`` as a resume of ``checkpoint`` must run it: the optimizer, clipping, timestep
    range, guidance and optimizer constants the checkpoint was trained with (its metadata; files
    from before they were recorded: AdamW, no clipping, 0..999, the prompt's guidance)."""
    stored = recipe_from(checkpoint)
    guidance_text = checkpoint.get("training_guidance", PROMPT_GUIDANCE)
    guidance = None if guidance_text == PROMPT_GUIDANCE else float(guidance_text)
    extra = tuple((k, stored[k]) for k in ("betas", "weight_decay", "eps") if k in stored)
    return replace(recipe, optimizer=stored["optimizer"], max_grad_norm=stored["max_grad_norm"],
                   first_timestep=stored["first_timestep"], guidance=guidance, extra=extra)


def changed_by_resume(recipe: RunRecipe, resumed: RunRecipe) -> list[str]:
    """What the checkpoint's own rules change from what this node would start a run with."""
    out = []
    if recipe.max_grad_norm != resumed.max_grad_norm:
        out.append(f"clipping {resumed.max_grad_norm or 'off'}")
    if recipe.first_timestep != resumed.first_timestep:
        out.append(f"timesteps {resumed.first_timestep}..{resumed.first_timestep + 999}")
    if recipe.guidance != resumed.guidance:
        out.append("the prompt's guidance" if resumed.guidance is None else f"guidance {resumed.guidance:g}")
    return out


# -- what the frontend's schedule plot is told ------------------------------------------------------------
# Under 'family reference' the node's rank / min_rank / variant widgets are not what trains, and
# which family a MODEL is only the server knows once the graph runs: before a run the plot names
# each family's recipe (family_recipes, GET /tlora/recipes), after it the schedule the run used
# (schedule_facts, in the node's progress events and UI output).
def schedule_facts(recipe: RunRecipe, config: TLoRAConfig) -> dict[str, Any]:
    """The schedule a run trains (after a resume: the checkpoint's, which equals ``config``)."""
    return {
        "recipe": recipe.name,
        "choice": recipe.choice,
        "family": model_kinds.family_name(config.model_family),
        "variant": config.variant,
        "variant_label": VARIANT_LABELS[config.variant],
        "rank": config.rank,
        "min_rank": config.min_rank,
        "schedule_power": config.schedule_power,
    }


def family_recipes() -> dict[str, Any]:
    """The recipes 'family reference' trains with, one entry per distinct recipe with the families
    that use it; ``others``: also any model the family table doesn't list (``generic_kind``)."""
    groups: dict[tuple, dict[str, Any]] = {}
    for recipe, label in [(kind.recipe, kind.label) for kind in model_kinds.KINDS] + [(model_kinds.DEFAULT_RECIPE, None)]:
        # only what the choice sets (preview_cfg differs inside one reference recipe)
        key = (recipe.name, recipe.variant, recipe.rank, recipe.min_rank, recipe.optimizer, recipe.learning_rate,
               recipe.max_grad_norm)
        group = groups.setdefault(key, {
            "name": recipe.name, "variant": recipe.variant, "variant_label": VARIANT_LABELS[recipe.variant],
            "rank": recipe.rank, "min_rank": recipe.min_rank, "optimizer": _OPTIMIZER_NAMES[recipe.optimizer],
            "learning_rate": recipe.learning_rate, "max_grad_norm": recipe.max_grad_norm, "families": [],
            "others": False,
        })
        if label is None:
            group["others"] = True
        elif label not in group["families"]:
            group["families"].append(label)
    return {"reference": REFERENCE, "custom": CUSTOM, "recipes": list(groups.values())}


__all__ = ["CHOICES", "CUSTOM", "OPTIMIZER_LABELS", "REFERENCE", "RunRecipe", "changed_by_resume", "family_recipes",
           "following", "resolve", "schedule_facts"]
