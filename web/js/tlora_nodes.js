// T-LoRA frontend niceties (optional: every node works without this file).
//
// - T-LoRA Train: a plot of the rank schedule r(t) over t in [0, 1000) that the node trains, with a
//   line saying where it comes from. Which one depends on its `recipe`:
//     custom            its rank / min_rank / schedule_power widgets, redrawn as they change;
//     family reference  the MODEL's family decides rank and min_rank (and the variant) when the
//                       graph runs, which the frontend can't know before: the plot names each
//                       family's recipe (GET /tlora/recipes, built from nodes/model_kinds.py) with a
//                       small curve each at the node's schedule_power; once the node has started
//                       training (or sent a cached result), the schedule that run used, labelled
//                       "as trained: <recipe>", from the `schedule` of its progress events and the
//                       `tlora_schedule` of its UI output (nodes/recipe.py schedule_facts).
//   min_rank = rank is drawn as what it is, a constant rank (no schedule); Vanilla T-LoRA is
//   masked by the same schedule as T-LoRA. While it trains, a live loss curve from the node's
//   "tlora.train.progress" websocket events ({node, step, steps, loss, schedule}).
// - Timestep-Aware Apply: the same plot for the T-LoRA on its "tlora" input: that of a connected
//   T-LoRA Train (as above), or the file behind a connected T-LoRA Load (GET /tlora/info reads
//   its header) with Load's non-zero min_rank / schedule_power overriding the file's values.
//
// - T-LoRA Train loaded from a workflow saved before its `recipe` input existed: recipe "custom",
//   so the workflow keeps training with the values set on it.
//
// The plot is a canvas widget that is never serialised (not in widgets_values, not in the API
// prompt), appended after the node's own widgets so saved workflows keep their layout.

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { NUM_TIMESTEPS, rankSchedule, scheduleProblem } from "./tlora_schedule.js";

const TRAIN = "TLoRA_Train";
const LOAD = "TLoRA_Load";
const APPLY = "TLoRA_Apply";
const PROGRESS_EVENT = "tlora.train.progress";
const WIDGET_TYPE = "tlora_plot";
const CUSTOM = "custom"; // T-LoRA Train's recipe value for its own widgets (a saved value: never changes)
// the schedule panel; its bottom SOURCE_AREA holds up to two lines that say where the schedule comes
// from (the height Timestep-Aware Apply's panel had with one line: shipped workflows' layouts keep)
const PLOT_HEIGHT = 162;
const SOURCE_AREA = 28;
const MIN_WIDTH = 340;
const LOSS_HEIGHT = 104;
const MARGIN = 12;
const COLORS = {
  panel: "#1e1f22",
  border: "#3c3f45",
  grid: "#2f3237",
  text: "#c9ccd1",
  muted: "#8b9099",
  curve: "#5ec8f2",
  fill: "rgba(94, 200, 242, 0.20)",
  loss: "#f2a65e",
  lossRaw: "rgba(242, 166, 94, 0.35)",
  error: "#ff7b72",
};

// -- where a node's schedule comes from -------------------------------------------------------------
const widgetValue = (node, name) => node?.widgets?.find((w) => w.name === name)?.value;
const served = new Map(); // route path -> {state: "loading" | "ok" | "error", info?, error?, at}
const RETRY_MS = 5000; // a missing file may appear (a training run finishing): ask again

/** The answer of one of the pack's GET routes (nodes/routes.py), asked once and redrawn when it comes. */
function request(path) {
  let entry = served.get(path);
  if (entry && !(entry.state === "error" && Date.now() - entry.at > RETRY_MS)) return entry;
  entry = { state: "loading", at: Date.now() };
  served.set(path, entry);
  api
    .fetchApi(path)
    .then(async (response) => {
      const body = await response.json().catch(() => ({}));
      if (response.ok) Object.assign(entry, { state: "ok", info: body });
      else Object.assign(entry, { state: "error", error: body.error || `HTTP ${response.status}`, at: Date.now() });
    })
    .catch((err) => Object.assign(entry, { state: "error", error: String(err), at: Date.now() }))
    .finally(() => app.graph?.setDirtyCanvas(true, false));
  return entry;
}

const infoPath = (name) => `/tlora/info?name=${encodeURIComponent(name)}`;
const requestInfo = (name) => request(infoPath(name));
const requestRecipes = () => request("/tlora/recipes"); // the same for every node and every MODEL
const formatPower = (p) => Number(p).toFixed(2).replace(/\.?0+$/, "");

/** The node feeding input `name` of `node`, through legacy Reroute nodes. */
function upstream(node, name) {
  let current = node;
  let slot = current.inputs?.findIndex((i) => i.name === name) ?? -1;
  for (let hops = 0; hops < 16 && slot >= 0; hops++) {
    const source = current.getInputNode(slot);
    if (!source) return null;
    if (source.type !== "Reroute") return source;
    current = source;
    slot = 0;
  }
  return null;
}

/** What T-LoRA Train `node` trains (see the header); `how` says where that comes from. */
function fromTrain(node) {
  const power = widgetValue(node, "schedule_power");
  const recipe = widgetValue(node, "recipe") ?? CUSTOM;
  if (recipe === CUSTOM) {
    return { rank: widgetValue(node, "rank"), minRank: widgetValue(node, "min_rank"), power, how: "custom: this node's widgets" };
  }
  const trained = node.tloraTrained;
  if (trained && trained.choice === recipe) {
    // the last run's schedule exactly; a schedule_power changed since applies from the next run
    const next = trained.schedule_power !== power ? ` · next run p ${formatPower(power)}` : "";
    return {
      rank: trained.rank,
      minRank: trained.min_rank,
      power: trained.schedule_power,
      trained: trained.recipe,
      how: `as trained: ${trained.recipe}, ${trained.variant_label} on ${trained.family}${next}`,
    };
  }
  return { reference: true, power, how: recipe };
}

function fromLoad(node) {
  const name = widgetValue(node, "lora_name");
  if (!name) return { message: "T-LoRA Load has no file selected" };
  const entry = requestInfo(name);
  if (entry.state === "loading") return { message: `reading ${name} …` };
  if (entry.state === "error") return { message: entry.error, error: true };
  const minRank = widgetValue(node, "min_rank");
  const power = widgetValue(node, "schedule_power");
  return {
    rank: entry.info.rank,
    minRank: minRank > 0 ? minRank : entry.info.min_rank,
    power: power > 0 ? power : entry.info.schedule_power,
    source: name,
  };
}

/** {rank, minRank, power, source}, {reference, power, source} or {message, error?} for a node with a plot. */
export function scheduleFor(node) {
  if (node.comfyClass === TRAIN) {
    const s = fromTrain(node);
    return { ...s, source: s.reference ? "rank, min_rank, variant, learning_rate and optimizer here apply only with recipe 'custom'" : s.how };
  }
  const source = upstream(node, "tlora");
  if (!source) return { message: "connect a T-LoRA Train or T-LoRA Load" };
  if (source.comfyClass === TRAIN) {
    const s = fromTrain(source);
    return { ...s, source: `from T-LoRA Train #${source.id} · ${s.how}` };
  }
  if (source.comfyClass === LOAD) return fromLoad(source);
  return { message: `schedule unknown for ${source.type}` };
}

// -- drawing ----------------------------------------------------------------------------------------------
function panel(ctx, x, y, w, h) {
  ctx.fillStyle = COLORS.panel;
  ctx.strokeStyle = COLORS.border;
  ctx.lineWidth = 1;
  ctx.beginPath();
  if (ctx.roundRect) ctx.roundRect(x, y, w, h, 6);
  else ctx.rect(x, y, w, h);
  ctx.fill();
  ctx.stroke();
}

function text(ctx, str, x, y, { color = COLORS.text, align = "left", size = 11, bold = false } = {}) {
  ctx.fillStyle = color;
  ctx.textAlign = align;
  ctx.textBaseline = "middle";
  ctx.font = `${bold ? "bold " : ""}${size}px Inter, Arial, sans-serif`;
  ctx.fillText(str, x, y);
}

const scheduleHeight = () => PLOT_HEIGHT;

/** Words of `str` in lines no wider than `width` (at the font `text` uses for `size`). */
function wrap(ctx, str, width, { size = 11, bold = false } = {}) {
  ctx.font = `${bold ? "bold " : ""}${size}px Inter, Arial, sans-serif`;
  const lines = [];
  let line = "";
  for (const word of str.split(/\s+/)) {
    const candidate = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(candidate).width > width) {
      lines.push(line);
      line = word;
    } else line = candidate;
  }
  if (line) lines.push(line);
  return lines;
}

/** `str` in at most `max` lines no wider than `width`, the last ending in "…" when cut. */
function clip(ctx, str, width, max, style = {}) {
  const lines = wrap(ctx, str, width, style);
  if (lines.length <= max) return lines;
  const kept = lines.slice(0, max);
  let last = `${kept[max - 1]} …`;
  while (last.length > 2 && ctx.measureText(last).width > width) last = `${last.slice(0, -3).trimEnd()} …`;
  kept[max - 1] = last;
  return kept;
}

function drawSource(ctx, str, x0, w, y, height) {
  const lines = clip(ctx, str, w - 16, 2, { size: 10 });
  const first = y + height - (lines.length > 1 ? 26 : 20);
  lines.forEach((line, i) => text(ctx, line, x0 + w / 2, first + 12 * i, { align: "center", size: 10 }));
}

function centredMessage(ctx, str, color, x0, w, y, h) {
  const lines = wrap(ctx, str.replace(/^T-LoRA: /, ""), w - 24).slice(0, 4);
  lines.forEach((line, i) => text(ctx, line, x0 + w / 2, y + 4 + h / 2 + 6 + (i - (lines.length - 1) / 2) * 15, { color, align: "center" }));
}

/** r(t) of one recipe, scaled into a small box (its own rank is the box's top). */
function sparkline(ctx, ranks, rank, x, y, w, h) {
  ctx.strokeStyle = COLORS.border;
  ctx.lineWidth = 1;
  ctx.strokeRect(x, y, w, h);
  ctx.beginPath();
  for (let t = 0; t < NUM_TIMESTEPS; t += 4) {
    const px = x + (w * t) / NUM_TIMESTEPS;
    const py = y + h - (h * ranks[t]) / rank;
    if (t) ctx.lineTo(px, py);
    else ctx.moveTo(px, py);
  }
  ctx.lineTo(x + w, y + h - (h * ranks[NUM_TIMESTEPS - 1]) / rank);
  ctx.strokeStyle = COLORS.curve;
  ctx.lineWidth = 1.5;
  ctx.stroke();
}

/** Recipe "family reference" before a run: what each family trains, at this node's power. */
function drawReference(ctx, widget, s, x0, w, y, height) {
  const h = PLOT_HEIGHT - SOURCE_AREA;
  const titleY = y + 17;
  text(ctx, "rank schedule r(t)", x0 + 8, titleY, { bold: true });
  const table = requestRecipes();
  if (table.state !== "ok") {
    const error = table.state === "error";
    widget.last = error ? { error: table.error } : { reference: true, loading: true };
    centredMessage(ctx, error ? table.error : "reading the family recipes …", error ? COLORS.error : COLORS.muted, x0, w, y, h);
    if (s.source) drawSource(ctx, s.source, x0, w, y, height);
    return;
  }
  const problem = scheduleProblem(1, 1, s.power);
  if (problem) {
    widget.last = { error: problem };
    centredMessage(ctx, problem, COLORS.error, x0, w, y, h);
    if (s.source) drawSource(ctx, s.source, x0, w, y, height);
    return;
  }
  text(ctx, `set by the MODEL's family · p ${formatPower(s.power)}`, x0 + w - 8, titleY, { align: "right", color: COLORS.muted, size: 10 });
  const shown = [];
  const left = x0 + 62;
  const width = x0 + w - 8 - left;
  const bottom = y + PLOT_HEIGHT - SOURCE_AREA - 2; // the last line's centre
  let cursor = y + 34;
  // "every other family" reads right only after the families named before it
  for (const recipe of [...table.info.recipes].sort((a, b) => a.others - b.others)) {
    const listed = recipe.families.join(", ");
    const families = recipe.others ? `every other family${listed ? `: ${listed}` : ""}` : listed;
    const familyLines = clip(ctx, families, width, 2, { size: 10 });
    if (cursor + 12 * (1 + familyLines.length) > bottom) break; // a table longer than the panel: the rest unsaid
    const ranks = rankSchedule(recipe.rank, recipe.min_rank, s.power);
    sparkline(ctx, ranks, recipe.rank, x0 + 10, cursor - 6, 44, 26);
    text(ctx, clip(ctx, recipe.name, width, 1, { bold: true })[0], left, cursor, { color: COLORS.curve, bold: true });
    const shape = recipe.rank === recipe.min_rank ? `rank ${recipe.rank}, constant` : `${recipe.rank} → ${recipe.min_rank}`;
    text(ctx, `${recipe.variant_label} ${shape} · ${recipe.optimizer} lr ${recipe.learning_rate}`, left, cursor + 12, { size: 10 });
    familyLines.forEach((line, i) => text(ctx, line, left, cursor + 24 + 12 * i, { color: COLORS.muted, size: 10 }));
    shown.push({ name: recipe.name, variant: recipe.variant, rank: recipe.rank, minRank: recipe.min_rank, families: recipe.families, others: recipe.others });
    cursor += 12 * (2 + familyLines.length) + 4;
  }
  widget.last = { reference: true, power: s.power, source: s.source, recipes: shown, complete: shown.length === table.info.recipes.length };
  if (s.source) drawSource(ctx, s.source, x0, w, y, height);
}

function drawSchedule(ctx, widget, node, width, y) {
  const x0 = MARGIN;
  const w = width - 2 * MARGIN;
  const height = scheduleHeight(node);
  const h = height - 8;
  panel(ctx, x0, y + 4, w, h);
  const s = scheduleFor(node);
  if (s.reference) return drawReference(ctx, widget, s, x0, w, y, height);
  const problem = s.message ?? scheduleProblem(s.rank, s.minRank, s.power);
  const titleY = y + 17;
  text(ctx, "rank schedule r(t)", x0 + 8, titleY, { bold: true });
  if (problem) {
    widget.last = { error: problem };
    centredMessage(ctx, problem, s.message && !s.error ? COLORS.muted : COLORS.error, x0, w, y, PLOT_HEIGHT - SOURCE_AREA);
    if (s.source && s.message === undefined) drawSource(ctx, s.source, x0, w, y, height);
    return;
  }
  const ranks = rankSchedule(s.rank, s.minRank, s.power);
  const constant = s.rank === s.minRank;
  widget.last = {
    rank: s.rank, minRank: s.minRank, power: s.power, source: s.source, trained: s.trained ?? null, constant,
    first: ranks[0], last: ranks[NUM_TIMESTEPS - 1],
  };
  const shape = constant ? `rank ${s.rank}, constant: no schedule` : `${s.rank} → ${s.minRank} · p ${formatPower(s.power)}`;
  text(ctx, shape, x0 + w - 8, titleY, { align: "right", color: COLORS.curve, bold: true });

  // plot area: y in [0, rank], x = timestep 0 .. 999 (noise rises to the right)
  const left = x0 + 34;
  const right = x0 + w - 12;
  const top = y + 32;
  const bottom = y + PLOT_HEIGHT - SOURCE_AREA - 40; // the axis labels go below, then the source
  const px = (t) => left + ((right - left) * t) / NUM_TIMESTEPS;
  const py = (r) => bottom - ((bottom - top) * r) / s.rank;

  ctx.strokeStyle = COLORS.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const r of [s.rank, s.minRank, 0]) {
    ctx.moveTo(left, py(r));
    ctx.lineTo(right, py(r));
  }
  ctx.stroke();

  const trace = () => {
    for (let t = 0; t < NUM_TIMESTEPS; t++) {
      ctx.lineTo(px(t), py(ranks[t]));
      ctx.lineTo(px(t + 1), py(ranks[t]));
    }
  };
  ctx.beginPath();
  ctx.moveTo(px(0), py(0));
  trace();
  ctx.lineTo(px(NUM_TIMESTEPS), py(0));
  ctx.closePath();
  ctx.fillStyle = COLORS.fill;
  ctx.fill();
  ctx.beginPath();
  ctx.moveTo(px(0), py(ranks[0]));
  trace();
  ctx.strokeStyle = COLORS.curve;
  ctx.lineWidth = 2;
  ctx.stroke();

  text(ctx, String(s.rank), left - 6, py(s.rank), { align: "right", color: COLORS.muted });
  if (bottom - py(s.minRank) > 10 && py(s.minRank) - py(s.rank) > 10)
    text(ctx, String(s.minRank), left - 6, py(s.minRank), { align: "right", color: COLORS.muted });
  text(ctx, "0", left - 6, py(0), { align: "right", color: COLORS.muted });
  const labelY = bottom + 10;
  text(ctx, "0", left, labelY, { color: COLORS.muted });
  text(ctx, "500", px(500), labelY, { color: COLORS.muted, align: "center" });
  text(ctx, "999", right, labelY, { color: COLORS.muted, align: "right" });
  text(ctx, "timestep t: low noise → high noise", px(500), labelY + 13, { color: COLORS.muted, align: "center", size: 10 });
  if (s.source) drawSource(ctx, s.source, x0, w, y, height);
}

function drawLoss(ctx, node, width, y) {
  const run = node.tloraLoss;
  const x0 = MARGIN;
  const w = width - 2 * MARGIN;
  const h = LOSS_HEIGHT - 8;
  panel(ctx, x0, y + 4, w, h);
  const last = run.losses[run.losses.length - 1];
  text(ctx, "loss", x0 + 8, y + 17, { bold: true });
  text(ctx, `step ${last.step}/${run.steps} · ${last.loss.toFixed(4)}`, x0 + w - 8, y + 17, { align: "right", color: COLORS.loss, bold: true });
  const left = x0 + 10;
  const right = x0 + w - 10;
  const top = y + 30;
  const bottom = y + LOSS_HEIGHT - 20;
  const values = run.losses.map((p) => p.loss).filter(Number.isFinite);
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi > lo ? hi - lo : 1;
  const px = (step) => left + ((right - left) * step) / Math.max(run.steps, 1);
  const py = (v) => bottom - ((bottom - top) * (v - lo)) / span;
  const line = (points, color, widthPx) => {
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(px(p.step), py(p.value)) : ctx.moveTo(px(p.step), py(p.value))));
    ctx.strokeStyle = color;
    ctx.lineWidth = widthPx;
    ctx.stroke();
  };
  line(run.losses.map((p) => ({ step: p.step, value: p.loss })), COLORS.lossRaw, 1);
  let ema = values[0];
  line(run.losses.map((p) => ({ step: p.step, value: (ema = 0.9 * ema + 0.1 * p.loss) })), COLORS.loss, 2);
  const saved = node.tloraSaved ? `saved ${node.tloraSaved}` : `min ${lo.toFixed(4)} · max ${hi.toFixed(4)}`;
  text(ctx, saved, x0 + w / 2, y + LOSS_HEIGHT - 9, { color: COLORS.muted, align: "center", size: 10 });
}

function plotHeight(node) {
  return scheduleHeight(node) + (node.tloraLoss?.losses.length ? LOSS_HEIGHT : 0);
}

function addPlot(node) {
  if (node.widgets?.some((w) => w.type === WIDGET_TYPE)) return;
  const widget = {
    type: WIDGET_TYPE,
    name: "tlora_schedule_plot",
    value: null,
    serialize: false, // not in widgets_values
    options: { serialize: false }, // not in the API prompt
    last: null, // what the latest draw showed (the browser test reads it)
    computeSize(width) {
      return [width ?? node.size[0], plotHeight(node)];
    },
    draw(ctx, drawnNode, width, y) {
      drawSchedule(ctx, widget, drawnNode, width, y);
      if (drawnNode.tloraLoss?.losses.length) drawLoss(ctx, drawnNode, width, y + scheduleHeight(drawnNode));
    },
  };
  node.addCustomWidget(widget);
  node.setSize([Math.max(node.size[0], MIN_WIDTH), Math.max(node.size[1], node.computeSize()[1])]);
}

function fitHeight(node) {
  const needed = node.computeSize()[1];
  if (node.size[1] < needed) node.setSize([node.size[0], needed]);
}

// -- live loss --------------------------------------------------------------------------------------------
function findNode(id) {
  const text = String(id);
  if (!text.includes(":")) return app.graph?.getNodeById(text) ?? null;
  // "outer:inner": a node inside a subgraph, drawn only while that subgraph is open (never a
  // root node that happens to share the inner id)
  const graph = app.canvas?.graph;
  return graph && graph !== app.graph ? graph.getNodeById(text.split(":").pop()) ?? null : null;
}

function onProgress({ detail }) {
  const node = findNode(detail?.node);
  if (!node || node.comfyClass !== TRAIN) return;
  let run = node.tloraLoss;
  const fresh = !run || detail.step <= (run.losses[run.losses.length - 1]?.step ?? 0);
  if (fresh) {
    run = node.tloraLoss = { steps: detail.steps, losses: [] };
    node.tloraSaved = null;
  }
  if (detail.schedule) node.tloraTrained = detail.schedule; // from the first step: what this run trains
  run.steps = detail.steps;
  run.losses.push({ step: detail.step, loss: detail.loss });
  if (run.losses.length > 4000) run.losses = run.losses.filter((_, i) => i % 2 === 0); // keep drawing cheap
  if (fresh) fitHeight(node);
  node.setDirtyCanvas(true, false);
}

app.registerExtension({
  name: "tlora-nodes.schedule",
  async setup() {
    api.addEventListener(PROGRESS_EVENT, onProgress);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== TRAIN && nodeData.name !== APPLY) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      addPlot(this);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (info) {
      const result = onConfigure?.apply(this, arguments);
      if (nodeData.name === TRAIN) {
        // A workflow saved before T-LoRA Train had its `recipe` widget meant the values set on the
        // node: keep them ("custom") rather than the family reference a new node starts with.
        const saved = this.widgets?.filter((w) => w.serialize !== false && w.options?.serialize !== false) ?? [];
        const position = saved.findIndex((w) => w.name === "recipe");
        const recipe = saved[position];
        if (recipe && Array.isArray(info?.widgets_values) && info.widgets_values.length <= position) recipe.value = CUSTOM;
      }
      fitHeight(this); // a size saved when the plot was shorter
      return result;
    };
    if (nodeData.name === TRAIN) {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output) {
        onExecuted?.apply(this, arguments);
        const saved = output?.tlora_saved?.[0];
        if (saved) {
          this.tloraSaved = saved;
          served.delete(infoPath(saved));
        }
        // also sent for a cached result, which ran no step this time
        const schedule = output?.tlora_schedule?.[0];
        if (schedule) this.tloraTrained = schedule;
        if (saved || schedule) this.setDirtyCanvas(true, false);
      };
    }
  },
});
