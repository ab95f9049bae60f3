"""The real ComfyUI frontend (comfyui-frontend-package, served by a real CPU ComfyUI server with
this pack) in headless Chromium: the shipped workflows load cleanly, the schedule plots are on
the nodes and follow their widgets, the loss curve follows a real training run.

Screenshots (one per workflow, plus close-ups of the plots) go to test-artifacts/browser/.
The session server's models folder has EMPTY placeholder files under the names the workflows
reference (see conftest.py), so the model lists contain them, and a small real T-LoRA file
(rank 64, min_rank 32) under the name load_and_compare.json loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .browser import Frontend, missing_browser
from .build_workflows import SPECS, WORKFLOWS
from .conftest import ARTIFACTS, TINY_UNET, loras_dir, save_log

pytestmark = pytest.mark.browser
SHOTS = ARTIFACTS / "browser"
PLOT_NODES = ("TLoRA_Train", "TLoRA_Apply")

# Everything a node needs to be judged, read in the page after a workflow is loaded.
INSPECT_JS = """
() => {
  const defs = Object.fromEntries(Object.entries(LiteGraph.registered_node_types).map(([k, v]) => [k, v.nodeData ?? null]));
  return app.graph.nodes.map((node) => ({
    id: node.id,
    type: node.type,
    title: node.title,
    registered: node.type in LiteGraph.registered_node_types,
    has_errors: !!node.has_errors,
    widgets_values: node.serialize().widgets_values ?? null,
    widgets: (node.widgets ?? []).map((w) => ({
      name: w.name, type: w.type, value: w.value ?? null,
      options: Array.isArray(w.options?.values) ? w.options.values : null,
      min: w.options?.min ?? null, max: w.options?.max ?? null,
      serialize: w.serialize !== false && w.options?.serialize !== false,
      last: w.type === "tlora_plot" ? w.last : undefined,
    })),
    python_module: defs[node.type]?.python_module ?? null,
  }));
}
"""


@pytest.fixture(scope="module")
def ui(request):
    why = missing_browser()
    if why:
        pytest.skip(f"browser tests: {why}")
    comfy_session = request.getfixturevalue("comfy_session")
    request.getfixturevalue("sdxl_adapter")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with Frontend.open(comfy_session) as frontend:
        yield frontend
    if request.session.testsfailed:
        save_log(comfy_session, "browser-session")


def workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def api_twin(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def shown(ui, node_id: int) -> dict:
    """What node `node_id`'s plot shows, drawn on screen (plots draw, and record it, only there),
    once it no longer waits for a route's answer. (After a run the frontend may have added a widget
    of its own after the plot: the progress text.)"""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    mark = ui.console_mark()
    try:
        handle = ui.page.wait_for_function(
            """(id) => { const node = app.graph.getNodeById(id);
                         app.canvas.ds.scale = 1; app.canvas.ds.offset = [-node.pos[0] + 40, -node.pos[1] + 60];
                         app.canvas.setDirty(true, true); app.canvas.draw(true, true);
                         const last = node.widgets.find((w) => w.type === "tlora_plot").last;
                         return last && !last.loading ? last : null; }""",
            arg=node_id, timeout=15_000,
        )
    except PlaywrightTimeout:
        last = ui.page.evaluate(
            "(id) => app.graph.getNodeById(id)?.widgets.find((w) => w.type === 'tlora_plot')?.last ?? 'no plot drawn'", node_id)
        raise AssertionError(f"node #{node_id}'s plot shows {last}; console: {ui.errors_since(mark)}") from None
    return handle.json_value()


def set_widgets(ui, node_id: int, **values) -> None:
    ui.page.evaluate(
        """([id, values]) => { const node = app.graph.getNodeById(id);
             for (const [name, value] of Object.entries(values)) node.widgets.find((w) => w.name === name).value = value; }""",
        [node_id, values],
    )


def check_reference_panel(last: dict, power: float) -> None:
    """The plot of a T-LoRA Train under recipe 'family reference' that hasn't run: each family's
    recipe, from GET /tlora/recipes, none of the node's rank widgets."""
    assert last["reference"] and "error" not in last and "rank" not in last, last
    assert last["complete"] and last["power"] == power, last
    recipes = {r["name"]: r for r in last["recipes"]}
    sd, flux = recipes["SD-XL paper recipe"], recipes["FLUX.1 reference recipe"]
    assert (sd["variant"], sd["rank"], sd["minRank"], sd["others"]) == ("tlora", 64, 32, False)
    assert {"SD1.5", "SD2", "SDXL"} <= set(sd["families"])
    assert (flux["variant"], flux["rank"], flux["minRank"], flux["others"]) == ("vanilla", 32, 1, True)
    assert "FLUX.1" in flux["families"]


def redraw(ui) -> None:
    ui.page.evaluate("() => { app.graph.setDirtyCanvas(true, true); app.canvas.draw(true, true); }")


def node_screenshot(ui, node_id: int, path: Path, scale: float = 1.25) -> None:
    """A close-up of one node at a legible zoom."""
    box = ui.page.evaluate(
        """([id, scale]) => {
          const node = app.graph.getNodeById(id);
          const c = app.canvas;
          const rect = c.canvas.getBoundingClientRect();
          c.ds.scale = scale;
          c.ds.offset = [-node.pos[0] + 30 / scale, -node.pos[1] + 60 / scale];
          c.setDirty(true, true); c.draw(true, true);
          return {x: rect.left, y: rect.top, w: node.size[0] * scale, h: (node.size[1] + LiteGraph.NODE_TITLE_HEIGHT) * scale};
        }""",
        [node_id, scale],
    )
    ui.settle(0.4)
    ui.page.screenshot(path=str(path), clip={"x": box["x"] + 15, "y": box["y"] + 15, "width": box["w"] + 30, "height": box["h"] + 35})


def ours(node: dict) -> bool:
    return "tlora" in (node.get("python_module") or "")


def widget_problems(wf: dict, nodes: list[dict]) -> list[str]:
    """Widget values the frontend would show wrong or the server would refuse."""
    saved = {str(n["id"]): n for n in wf["nodes"]}
    problems = []
    for n in nodes:
        # nothing was migrated, shifted or dropped: the loaded node serialises to the file's values
        stored = saved[str(n["id"])].get("widgets_values", n["widgets_values"])
        if not ours(n) and isinstance(stored, list) and isinstance(n["widgets_values"], list):
            # the workflows are saved by the newest tested frontend; an older ComfyUI's core node
            # may lack a widget a newer one appended (0.33's ImageScaleToTotalPixels.resolution_steps)
            stored = stored[: len(n["widgets_values"])]
        if n["widgets_values"] != stored:
            problems.append(f"#{n['id']} {n['type']}: widgets_values {stored} became {n['widgets_values']}")
        for w in n["widgets"]:
            value = w["value"]
            if w["options"] is not None and w["serialize"] and value not in w["options"]:
                problems.append(f"#{n['id']} {n['type']}.{w['name']}: {value!r} is not one of its options")
            if w["type"] == "number" and not (isinstance(value, (int, float)) and w["min"] <= value <= w["max"]):
                problems.append(f"#{n['id']} {n['type']}.{w['name']}: {value!r} outside [{w['min']}, {w['max']}]")
    return problems


def test_the_schedule_in_javascript_matches_the_python_schedule(ui):
    """web/js/tlora_schedule.js (float32 emulated with Math.fround) against tlora_core.RankSchedule."""
    import torch
    from tlora_nodes.tlora_core import RankSchedule

    configs = [(64, 32, 1.0), (32, 1, 1.0), (64, 16, 0.5), (128, 8, 2.0), (8, 8, 1.0), (7, 3, 1.7)]
    got = ui.page.evaluate(
        """async (configs) => {
          const s = await import('/extensions/tlora-nodes/js/tlora_schedule.js');
          return configs.map(([r, m, p]) => Array.from(s.rankSchedule(r, m, p)));
        }""",
        configs,
    )
    for (rank, min_rank, power), js in zip(configs, got):
        expected = RankSchedule(rank, min_rank, power).rank_at(torch.arange(1000)).tolist()
        assert js == expected, f"r(t) differs for rank {rank}, min_rank {min_rank}, power {power}"
    # SPEC §2's worked example
    assert got[0][0] == 64 and got[0][1] == 63 and got[0][968] == 33 and set(got[0][969:]) == {32}


@pytest.mark.parametrize("name", list(SPECS))
def test_shipped_workflow_loads_with_no_missing_nodes_or_bad_widget_values(ui, name):
    wf = workflow(name)
    mark = ui.console_mark()
    ui.load_workflow(wf)
    dialogs = ui.visible_dialogs()
    ui.page.screenshot(path=str(SHOTS / f"{name}.png"))
    assert not dialogs, f"{name} opened with a dialog (missing nodes or models, or an error): {dialogs}"

    nodes = ui.page.evaluate(INSPECT_JS)
    assert len(nodes) == len(wf["nodes"])
    missing = [n["type"] for n in nodes if not n["registered"] or n["has_errors"]]
    assert not missing, f"{name}: node types missing in the frontend: {missing}"
    problems = widget_problems(wf, nodes)
    assert not problems, f"{name}: widget-value errors:\n" + "\n".join(problems)
    errors = [e for e in ui.errors_since(mark) if "user.css" not in e]
    assert not errors, f"{name}: console errors while loading:\n" + "\n".join(errors)

    # the schedule plot is on every Train / Apply node, after the node's own widgets, never serialised
    redraw(ui)
    nodes = ui.page.evaluate(INSPECT_JS)
    plotted = [n for n in nodes if n["type"] in PLOT_NODES]
    assert plotted, f"{name} has no T-LoRA Train / Timestep-Aware Apply node"
    for n in plotted:
        plot = n["widgets"][-1]
        assert plot["type"] == "tlora_plot" and not plot["serialize"], n["widgets"]
        assert plot["last"] and "error" not in plot["last"], f"#{n['id']} {n['title']}: plot shows {plot['last']}"
        node_screenshot(ui, n["id"], SHOTS / f"{name}-node{n['id']}-{n['type']}.png")


REFERENCE = "family reference recipes"


def expected_plots(name: str) -> dict[str, tuple[int, int, float] | str]:
    """(rank, min_rank, schedule_power) each plot should show, or REFERENCE (the panel of the family
    reference recipes, schedule_power 1), by node title prefix."""
    return {
        "train_from_one_image": {"T-LoRA Train": (64, 32, 1.0)},
        "load_and_compare": {
            "Timestep-Aware Apply · schedule on": (64, 32, 1.0),  # the file's min_rank
            "Timestep-Aware Apply · schedule off": (64, 64, 1.0),  # Load's min_rank = rank overrides it
        },
        "flux_train_and_sample": {"T-LoRA Train": (32, 1, 1.0)},
        # recipe 'family reference', not run yet: the family recipes panel (its values are set on the node too)
        "wan_train_and_sample": {"T-LoRA Train": REFERENCE, "Timestep-Aware Apply": REFERENCE},
    }[name]


@pytest.mark.parametrize("name", list(SPECS))
def test_schedule_plots_show_the_schedule_of_their_adapter(ui, name):
    ui.load_workflow(workflow(name))
    redraw(ui)
    ui.settle(0.5)  # Apply's plot reads the file behind T-LoRA Load through GET /tlora/info
    redraw(ui)
    nodes = ui.page.evaluate(INSPECT_JS)
    shown = {n["title"]: n["widgets"][-1]["last"] for n in nodes if n["type"] in PLOT_NODES}
    for prefix, expected in expected_plots(name).items():
        title = next(t for t in shown if t.startswith(prefix))
        last = shown[title]
        if expected == REFERENCE:
            check_reference_panel(last, 1.0)
            continue
        rank, min_rank, power = expected
        assert (last["rank"], last["minRank"], last["power"]) == (rank, min_rank, power), f"{title}: {last}"
        assert last["first"] == rank and last["last"] == min_rank


@pytest.mark.parametrize("name", list(SPECS))
def test_ui_workflow_converts_to_the_committed_api_twin(ui, name):
    """The frontend's own converter (app.graphToPrompt) turns the UI workflow into exactly the
    committed workflows/api/<name>.json: node types, widget inputs and links."""
    ui.load_workflow(workflow(name))
    output = json.loads(ui.page.evaluate("async () => JSON.stringify((await app.graphToPrompt()).output)"))
    twin = api_twin(name)
    declared = ui.page.evaluate(
        """(types) => Object.fromEntries(types.map((t) => { const d = LiteGraph.registered_node_types[t]?.nodeData?.input ?? {};
             return [t, [...Object.keys(d.required ?? {}), ...Object.keys(d.optional ?? {})]]; }))""",
        sorted({e["class_type"] for e in twin.values()}),
    )
    assert set(output) == set(twin)
    for node_id, entry in twin.items():
        assert output[node_id]["class_type"] == entry["class_type"], node_id
        # an input a newer ComfyUI added to a core node (the twin is made by the newest tested
        # one) is not in an older one's prompt, and its server would ignore it
        want = {k: v for k, v in entry["inputs"].items() if k in declared[entry["class_type"]] or entry["class_type"].startswith("TLoRA_")}
        assert output[node_id]["inputs"] == want, f"node {node_id} ({entry['class_type']})"


def test_plots_follow_widget_edits_and_links(ui):
    """Editing T-LoRA Train's widgets redraws its plot and the plot of an Apply fed by it."""
    ui.load_workflow(workflow("load_and_compare"))
    result = ui.page.evaluate(
        """async () => {
          const train = LiteGraph.createNode("TLoRA_Train");
          train.pos = [2200, 40];
          app.graph.add(train);
          const apply = app.graph.nodes.find((n) => n.type === "TLoRA_Apply" && n.title.endsWith("schedule on"));
          train.connect(1, apply, apply.inputs.findIndex((i) => i.name === "tlora"));
          const set = (name, value) => { train.widgets.find((w) => w.name === name).value = value; };
          set("recipe", "custom"); set("rank", 16); set("min_rank", 4); set("schedule_power", 2.0);
          app.graph.setDirtyCanvas(true, true); app.canvas.draw(true, true);
          const last = (node) => node.widgets.find((w) => w.type === "tlora_plot").last;
          const before = { train: last(train), apply: last(apply) };
          set("min_rank", 20);  // invalid: above rank
          app.canvas.draw(true, true);
          return { ...before, invalid: last(train), applyInvalid: last(apply) };
        }"""
    )
    for key in ("train", "apply"):
        assert (result[key]["rank"], result[key]["minRank"], result[key]["power"]) == (16, 4, 2.0), result
    assert result["train"]["source"] == "custom: this node's widgets"
    assert result["apply"]["source"].startswith("from T-LoRA Train #") and result["apply"]["source"].endswith(" · custom: this node's widgets")
    assert "min_rank (20) > rank (16)" in result["invalid"]["error"]
    assert "min_rank (20) > rank (16)" in result["applyInvalid"]["error"]
    train_id = ui.page.evaluate("() => app.graph.nodes.find((n) => n.type === 'TLoRA_Train').id")
    node_screenshot(ui, train_id, SHOTS / "plot_invalid_widgets.png")

    # min_rank = rank: a constant rank, said so
    set_widgets(ui, train_id, min_rank=16)
    last = shown(ui, train_id)
    assert last["constant"] and (last["first"], last["last"]) == (16, 16), last

    # recipe 'family reference' (a new node's default): the node's rank widgets are not what trains,
    # and before a run nobody knows the MODEL's family: both plots name each family's recipe instead
    set_widgets(ui, train_id, recipe="family reference")
    check_reference_panel(shown(ui, train_id), 2.0)
    apply_on = ui.page.evaluate("() => app.graph.nodes.find((n) => n.type === 'TLoRA_Apply' && n.title.endsWith('schedule on')).id")
    last = shown(ui, apply_on)
    check_reference_panel(last, 2.0)
    assert last["source"] == f"from T-LoRA Train #{train_id} · family reference", last
    node_screenshot(ui, train_id, SHOTS / "plot_family_reference.png")

    # a T-LoRA Load whose file isn't there: the Apply plot says so (from GET /tlora/info)
    apply_id = ui.page.evaluate(
        """async () => {
          const load = app.graph.nodes.find((n) => n.type === "TLoRA_Load" && n.title.endsWith("schedule off"));
          load.widgets.find((w) => w.name === "lora_name").value = "tlora/not_trained_yet.safetensors";
          return app.graph.nodes.find((n) => n.type === "TLoRA_Apply" && n.title.endsWith("schedule off")).id;
        }"""
    )
    ui.page.wait_for_function(  # plots draw (and record what they show) only when on screen
        """(id) => { const node = app.graph.getNodeById(id);
                     app.canvas.ds.scale = 1; app.canvas.ds.offset = [-node.pos[0] + 40, -node.pos[1] + 60];
                     app.canvas.setDirty(true, true); app.canvas.draw(true, true);
                     return node.widgets.at(-1).last?.error?.includes("not in the loras folder"); }""",
        arg=apply_id, timeout=15_000,
    )
    node_screenshot(ui, apply_id, SHOTS / "plot_missing_file.png")


def test_live_loss_curve_follows_a_real_training_run(ui, request):
    """Queue a tiny training from the frontend itself (app.queuePrompt): the node's websocket
    events reach the page and draw the loss curve, and the saved file name shows up."""
    comfy_session = request.getfixturevalue("comfy_session")  # after ui: no server when ui skips
    steps = 8
    ui.page.evaluate(
        """async ([unet, steps]) => {
          await app.loadGraphData({last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {}, extra: {}, version: 0.4});
          const add = (type, pos) => { const n = LiteGraph.createNode(type); n.pos = pos; app.graph.add(n); return n; };
          const loader = add("UNETLoader", [20, 40]);
          loader.widgets.find((w) => w.name === "unet_name").value = unet;
          const cond = add("LotusConditioning", [20, 200]);
          const latent = add("EmptyLatentImage", [20, 300]);
          latent.widgets.find((w) => w.name === "width").value = 64;
          latent.widgets.find((w) => w.name === "height").value = 64;
          const train = add("TLoRA_Train", [420, 40]);
          const set = (name, value) => { train.widgets.find((w) => w.name === name).value = value; };
          // recipe: a new node's default, "family reference": these values are not what trains
          set("steps", steps); set("rank", 4); set("min_rank", 2); set("variant", "Vanilla T-LoRA");
          set("learning_rate", 0.001); set("save_every", 0); set("filename_prefix", "e2e/browser");
          set("gradient_checkpointing", false); set("seed", 3); set("schedule_power", 2.0);
          loader.connect(0, train, 0); latent.connect(0, train, 1); cond.connect(0, train, 2);
        }""",
        [TINY_UNET, steps],
    )
    train_id = ui.page.evaluate("() => app.graph.nodes.find((n) => n.type === 'TLoRA_Train').id")
    before = shown(ui, train_id)  # before the run: each family's recipe
    check_reference_panel(before, 2.0)
    ui.page.evaluate("async () => { app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0]; await app.queuePrompt(0); }")
    ui.page.wait_for_function(
        """(steps) => { const n = app.graph.nodes.find((n) => n.type === "TLoRA_Train");
                        return n?.tloraSaved && n.tloraLoss?.losses.length === steps; }""",
        arg=steps, timeout=240_000,
    )
    redraw(ui)
    state = ui.page.evaluate(
        """() => { const n = app.graph.nodes.find((n) => n.type === "TLoRA_Train");
                   return {id: n.id, saved: n.tloraSaved, steps: n.tloraLoss.losses.map((p) => p.step),
                           losses: n.tloraLoss.losses.map((p) => p.loss), height: n.size[1], needed: n.computeSize()[1]}; }"""
    )
    assert state["steps"] == list(range(1, steps + 1))
    assert all(isinstance(v, float) for v in state["losses"])
    assert state["saved"].startswith("e2e/browser_") and (loras_dir(comfy_session) / state["saved"]).exists()
    assert state["height"] >= state["needed"]  # the node grew to show the curve
    node_screenshot(ui, state["id"], SHOTS / "live_loss_curve.png")

    # after the run: the schedule it trained (the tiny UNet is an SD2: the SD-XL paper recipe's
    # T-LoRA 64 -> 32, at the node's schedule_power), not the node's rank 4 / min_rank 2 / Vanilla
    as_trained = "as trained: SD-XL paper recipe, T-LoRA on SD2"
    last = shown(ui, train_id)
    assert (last["rank"], last["minRank"], last["power"], last["first"], last["last"]) == (64, 32, 2.0, 64, 32), last
    assert (last["trained"], last["source"]) == ("SD-XL paper recipe", as_trained), last
    # a Timestep-Aware Apply fed by it shows the same
    apply_id = ui.page.evaluate(
        """() => { const train = app.graph.nodes.find((n) => n.type === "TLoRA_Train");
                   const loader = app.graph.nodes.find((n) => n.type === "UNETLoader");
                   const apply = LiteGraph.createNode("TLoRA_Apply"); apply.pos = [900, 40]; app.graph.add(apply);
                   loader.connect(0, apply, 0); train.connect(1, apply, apply.inputs.findIndex((i) => i.name === "tlora"));
                   return apply.id; }"""
    )
    last = shown(ui, apply_id)
    assert (last["rank"], last["minRank"], last["power"]) == (64, 32, 2.0), last
    assert last["source"] == f"from T-LoRA Train #{train_id} · {as_trained}", last
    # 'custom' would train the widgets: the plot follows them
    set_widgets(ui, train_id, recipe="custom")
    last = shown(ui, train_id)
    assert (last["rank"], last["minRank"], last["power"], last["trained"]) == (4, 2, 2.0, None), last
    assert last["source"] == "custom: this node's widgets"
    # back at the reference: the run's schedule again, and a schedule_power changed since is said to be the next run's
    set_widgets(ui, train_id, recipe="family reference", schedule_power=1.5)
    last = shown(ui, train_id)
    assert (last["rank"], last["minRank"], last["power"]) == (64, 32, 2.0), last
    assert last["source"] == f"{as_trained} · next run p 1.5", last
    node_screenshot(ui, train_id, SHOTS / "plot_as_trained.png")


def test_the_checks_see_a_missing_node_and_a_bad_widget_value(ui):
    """The load test's detectors, on a broken copy of a shipped workflow: an unknown node type
    raises the frontend's missing-nodes dialog, a value outside a combo's options is reported."""
    wf = workflow("train_from_one_image")
    train = next(n for n in wf["nodes"] if n["type"] == "TLoRA_Train")
    train["widgets_values"][5] = "LoRA"  # variant
    loader = next(n for n in wf["nodes"] if n["type"] == "CheckpointLoaderSimple")
    loader["type"] = "NoSuchLoader"
    ui.load_workflow(wf)
    dialogs = ui.visible_dialogs()
    nodes = ui.page.evaluate(INSPECT_JS)
    ui.close_dialogs()
    assert any("Missing" in d for d in dialogs), dialogs
    assert [n["type"] for n in nodes if not n["registered"]] == ["NoSuchLoader"]
    problems = widget_problems(wf, [n for n in nodes if n["registered"]])
    assert any("variant: 'LoRA' is not one of its options" in p for p in problems), problems


def test_a_train_node_saved_before_the_recipe_input_keeps_the_values_set_on_it(ui):
    """A workflow saved before T-LoRA Train had `recipe` (and the preview inputs) loads with recipe
    'custom', so it trains with the rank, learning rate... stored on it; a new node starts at the
    family reference."""
    wf = workflow("flux_train_and_sample")
    train = next(n for n in wf["nodes"] if n["type"] == "TLoRA_Train")
    assert "custom" in train["widgets_values"]
    ui.load_workflow(wf)
    names = ui.page.evaluate(
        """(id) => app.graph.getNodeById(id).widgets.filter((w) => w.serialize !== false && w.options?.serialize !== false)
                     .map((w) => w.name)""",
        train["id"],
    )
    old = json.loads(json.dumps(wf))
    old_train = next(n for n in old["nodes"] if n["id"] == train["id"])
    old_train["widgets_values"] = old_train["widgets_values"][: names.index("preview_every")]  # what was saved then
    ui.load_workflow(old)
    state = ui.page.evaluate(
        """(id) => { const node = app.graph.getNodeById(id); const w = (n) => node.widgets.find((x) => x.name === n).value;
             const fresh = LiteGraph.createNode("TLoRA_Train");
             return {recipe: w("recipe"), rank: w("rank"), min_rank: w("min_rank"),
                     fresh: fresh.widgets.find((x) => x.name === "recipe").value}; }""",
        train["id"],
    )
    assert state == {"recipe": "custom", "rank": 32, "min_rank": 1, "fresh": "family reference"}
    output = json.loads(ui.page.evaluate("async () => JSON.stringify((await app.graphToPrompt()).output)"))
    assert output[str(train["id"])]["inputs"]["recipe"] == "custom"
