// T-LoRA frontend niceties (optional: every node works without this file).
//
// - T-LoRA Train: a plot of the rank schedule r(t) over t in [0, 1000) from its rank / min_rank /
//   schedule_power widgets, redrawn as they change; while it trains, a live loss curve from the
//   node's "tlora.train.progress" websocket events ({node, step, steps, loss}).
// - Timestep-Aware Apply: the same plot for the T-LoRA on its "tlora" input: the widgets of a
//   connected T-LoRA Train, or the file behind a connected T-LoRA Load (GET /tlora/info reads
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
const PLOT_HEIGHT = 146; // + SOURCE_LINE on Timestep-Aware Apply, which names where its schedule comes from
const SOURCE_LINE = 16;
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
const fileInfo = new Map(); // lora_name -> {state: "loading" | "ok" | "error", info?, error?, at}
const RETRY_MS = 5000; // a missing file may appear (a training run finishing): ask again

function requestInfo(name) {
  let entry = fileInfo.get(name);
  if (entry && !(entry.state === "error" && Date.now() - entry.at > RETRY_MS)) return entry;
  entry = { state: "loading", at: Date.now() };
  fileInfo.set(name, entry);
  api
    .fetchApi(`/tlora/info?name=${encodeURIComponent(name)}`)
    .then(async (response) => {
      const body = await response.json().catch(() => ({}));
      if (response.ok) Object.assign(entry, { state: "ok", info: body });
      else Object.assign(entry, { state: "error", error: body.error || `HTTP ${response.status}`, at: Date.now() });
    })
    .catch((err) => Object.assign(entry, { state: "error", error: String(err), at: Date.now() }))
    .finally(() => app.graph?.setDirtyCanvas(true, false));
  return entry;
}

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

function fromTrain(node) {
  return {
    rank: widgetValue(node, "rank"),
    minRank: widgetValue(node, "min_rank"),
    power: widgetValue(node, "schedule_power"),
    source: `from T-LoRA Train #${node.id}`,
  };
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

/** {rank, minRank, power, source} or {message, error?} for a node with a plot. */
export function scheduleFor(node) {
  if (node.comfyClass === TRAIN) return { ...fromTrain(node), source: "" };
  const source = upstream(node, "tlora");
  if (!source) return { message: "connect a T-LoRA Train or T-LoRA Load" };
  if (source.comfyClass === TRAIN) return fromTrain(source);
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

const scheduleHeight = (node) => PLOT_HEIGHT + (node.comfyClass === APPLY ? SOURCE_LINE : 0);

/** Words of `str` in lines no wider than `width` (at the 11px font `text` uses). */
function wrap(ctx, str, width) {
  ctx.font = "11px Inter, Arial, sans-serif";
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

function drawSchedule(ctx, widget, node, width, y) {
  const x0 = MARGIN;
  const w = width - 2 * MARGIN;
  const height = scheduleHeight(node);
  const h = height - 8;
  panel(ctx, x0, y + 4, w, h);
  const s = scheduleFor(node);
  const problem = s.message ?? scheduleProblem(s.rank, s.minRank, s.power);
  const titleY = y + 17;
  text(ctx, "rank schedule r(t)", x0 + 8, titleY, { bold: true });
  if (problem) {
    widget.last = { error: problem };
    const color = s.message && !s.error ? COLORS.muted : COLORS.error;
    const lines = wrap(ctx, problem.replace(/^T-LoRA: /, ""), w - 24).slice(0, 4);
    lines.forEach((line, i) => text(ctx, line, x0 + w / 2, y + 4 + h / 2 + 6 + (i - (lines.length - 1) / 2) * 15, { color, align: "center" }));
    return;
  }
  const ranks = rankSchedule(s.rank, s.minRank, s.power);
  widget.last = { rank: s.rank, minRank: s.minRank, power: s.power, source: s.source, first: ranks[0], last: ranks[NUM_TIMESTEPS - 1] };
  text(ctx, `${s.rank} → ${s.minRank} · p ${Number(s.power).toFixed(2).replace(/\.?0+$/, "")}`, x0 + w - 8, titleY, { align: "right", color: COLORS.curve, bold: true });

  // plot area: y in [0, rank], x = timestep 0 .. 999 (noise rises to the right)
  const left = x0 + 34;
  const right = x0 + w - 12;
  const top = y + 32;
  const bottom = y + PLOT_HEIGHT - 40;  // the source line, if any, goes below the axis
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
  if (s.source) text(ctx, s.source, x0 + w / 2, y + height - 14, { color: COLORS.text, align: "center", size: 10 });
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
  node.setSize([Math.max(node.size[0], 300), Math.max(node.size[1], node.computeSize()[1])]);
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
    if (nodeData.name === TRAIN) {
      // A workflow saved before T-LoRA Train had its `recipe` widget meant the values set on the
      // node: keep them ("custom") rather than the family reference a new node starts with.
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function (info) {
        const result = onConfigure?.apply(this, arguments);
        const saved = this.widgets?.filter((w) => w.serialize !== false && w.options?.serialize !== false) ?? [];
        const position = saved.findIndex((w) => w.name === "recipe");
        const recipe = saved[position];
        if (recipe && Array.isArray(info?.widgets_values) && info.widgets_values.length <= position) recipe.value = "custom";
        return result;
      };
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output) {
        onExecuted?.apply(this, arguments);
        const saved = output?.tlora_saved?.[0];
        if (saved) {
          this.tloraSaved = saved;
          fileInfo.delete(saved);
          this.setDirtyCanvas(true, false);
        }
      };
    }
  },
});
