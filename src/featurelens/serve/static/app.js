// featurelens web app: one page, eight views (#/, #/feature/ID, #/try, #/steer, #/circuit, #/neurons, #/probe,
// #/compare), built on /api.
"use strict";

const view = document.getElementById("view");
const state = { sort: "recommended", order: "desc", offset: 0, limit: 50, meta: null };
const ORDERS = [["recommended", "recommended"], ["density", "density"], ["count", "count"], ["mean_activation", "mean activation"],
  ["max_activation", "max activation"], ["explanation_score", "explanation score"], ["id", "id"]];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function put(...children) {  // show a view; null children (absent sections) are left out
  view.replaceChildren(...children.flat(Infinity).filter((child) => child !== null && child !== undefined));
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  for (;;) {
    const response = await fetch(path, options);
    if (response.status === 429) {  // the model is loading: wait and retry
      await new Promise((resolve) => setTimeout(resolve, 1500));
      continue;
    }
    const payload = await response.json();
    if (!response.ok) {
      const detail = typeof payload.detail === "string" ? payload.detail : JSON.stringify(payload.detail);
      throw new Error(detail);
    }
    return payload;
  }
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "—" : Number(x).toPrecision(digits));
const pct = (x) => (x === null || x === undefined ? "—" : (100 * x).toPrecision(3) + "%");
const shown = (text) => text.replace(/\n/g, "↵");
const featureLink = (id, label) => el("a", { href: `#/feature/${id}` }, label ?? `#${id}`);

function histogram(edges, counts, { log = true, label = "" } = {}) {
  const width = 520, height = 120, pad = 18;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "histogram");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height + pad);
  const top = Math.max(1, ...counts);
  const x = log ? edges.map((e) => Math.log10(e)) : edges;
  const span = (x[x.length - 1] - x[0]) || 1;
  counts.forEach((count, i) => {
    const rect = document.createElementNS(svg.namespaceURI, "rect");
    const left = ((x[i] - x[0]) / span) * width;
    const right = ((x[i + 1] - x[0]) / span) * width;
    const h = (count / top) * height;
    rect.setAttribute("x", left.toFixed(1));
    rect.setAttribute("y", (height - h).toFixed(1));
    rect.setAttribute("width", Math.max(1, right - left - 0.5).toFixed(1));
    rect.setAttribute("height", h.toFixed(1));
    const title = document.createElementNS(svg.namespaceURI, "title");
    title.textContent = `${fmt(edges[i])} – ${fmt(edges[i + 1])}: ${count}`;
    rect.append(title);
    svg.append(rect);
  });
  for (const [pos, anchor, value] of [[0, "start", edges[0]], [width, "end", edges[edges.length - 1]]]) {
    const text = document.createElementNS(svg.namespaceURI, "text");
    text.setAttribute("x", pos);
    text.setAttribute("y", height + 13);
    text.setAttribute("text-anchor", anchor);
    text.textContent = `${label}${fmt(value)}`;
    svg.append(text);
  }
  return svg;
}

function contextLine(context, scale) {
  const line = el("div", { class: "context" });
  context.tokens.forEach((token, i) => {
    const value = context.activations[i];
    const strength = scale > 0 ? Math.max(0, Math.min(1, value / scale)) : 0;
    const span = el("span", { class: "tok" + (i === context.centre ? " centre" : ""), title: `activation ${fmt(value)}` },
      shown(token));
    if (value > 0) {
      span.style.background = `rgba(234, 88, 12, ${(0.15 + 0.85 * strength).toFixed(3)})`;
      span.dataset.activation = value;
    }
    line.append(span);
  });
  return line;
}

async function overview() {
  const [meta, densities, page] = await Promise.all([
    api("/api/meta"), api("/api/densities"),
    api(`/api/features?sort=${state.sort}&order=${state.order}&limit=${state.limit}&offset=${state.offset}`),
  ]);
  state.meta = meta;
  const evaluation = meta.evaluation || {};
  const evalStats = [["FVU", evaluation.fvu, fmt], ["L0", evaluation.l0, fmt], ["dead", evaluation.dead_fraction, pct],
    ["CE loss recovered", evaluation.ce_loss_recovered, pct]].filter(([, v]) => v !== undefined && v !== null);
  const columns = [["id", "id"], ["density", "density"], ["mean_activation", "mean act"], ["max_activation", "max act"],
    ["explanation_score", "explanation (detection AUROC)"]];
  const head = el("tr", {}, columns.map(([key, label]) => el("th", {
    class: "sortable", "data-sort": key,
    onclick: () => {
      state.order = state.sort === key && state.order === "desc" ? "asc" : "desc";
      state.sort = key; state.offset = 0; render();
    },
  }, label + (state.sort === key ? (state.order === "desc" ? " ↓" : " ↑") : ""))));
  const rows = page.items.map((f) => el("tr", { class: "feature-row" },
    el("td", {}, featureLink(f.id)), el("td", { class: "num" }, pct(f.density)),
    el("td", { class: "num" }, fmt(f.mean_activation)), el("td", { class: "num" }, fmt(f.max_activation)),
    el("td", { class: "explanation" }, f.explanation ? `${f.explanation} (${fmt(f.explanation_score, 2)})` : "")));
  const last = Math.min(page.total, state.offset + state.limit);
  const sortControl = el("p", { class: "sort-control" }, el("label", { for: "sort" }, "order "),
    el("select", { id: "sort", onchange: (event) => {
      state.sort = event.target.value; state.order = "desc"; state.offset = 0; render();
    } }, ORDERS.map(([key, label]) => el("option", { value: key, ...(state.sort === key ? { selected: "" } : {}) }, label))),
    state.order === "asc" ? " (reversed)" : "",
    page.rule ? el("span", { class: "muted", id: "sort-rule" }, ` — ${page.rule}`) : null);
  put(
    el("h1", {}, `${meta.kind === "neurons" ? "Neurons" : "Features"} of ${meta.hook_in}`),
    el("div", { class: "stats" },
      el("span", {}, "model ", el("b", {}, meta.model)), el("span", {}, "dictionary ", el("b", {}, meta.arch)),
      el("span", {}, el("b", {}, page.total.toLocaleString()), " features"),
      el("span", {}, el("b", {}, meta.tokens.toLocaleString()), ` tokens (${meta.source})`)),
    evalStats.length ? el("div", { class: "stats", id: "evaluation" },
      evalStats.map(([name, value, f]) => el("span", {}, `${name} `, el("b", {}, f(value))))) : null,
    el("h2", {}, "feature density (log10)"),
    densities.counts.length ? histogram(densities.edges, densities.counts, { log: false, label: "10^" }) : null,
    el("p", { class: "muted" }, `${densities.dead} never fired`),
    sortControl,
    el("table", { id: "features" }, el("thead", {}, head), el("tbody", {}, rows)),
    el("div", { class: "pager" },
      el("button", { onclick: () => { state.offset = Math.max(0, state.offset - state.limit); render(); },
        ...(state.offset === 0 ? { disabled: "" } : {}) }, "previous"),
      el("span", {}, `${state.offset + 1}–${last} of ${page.total}`),
      el("button", { onclick: () => { state.offset += state.limit; render(); },
        ...(last >= page.total ? { disabled: "" } : {}) }, "next")));
}

function tokenList(items, cls) {
  return items.length ? items.map((t) => el("span", { class: `pill ${cls}`, title: fmt(t.value) },
    `${shown(t.text)} ${t.value >= 0 ? "+" : ""}${fmt(t.value, 2)}`)) : [el("span", { class: "muted" }, "—")];
}

async function featurePage(id) {
  const f = await api(`/api/features/${id}`);
  const scale = f.max_activation || 0;
  const byBin = new Map();
  for (const c of f.quantiles) byBin.set(c.bin, [...(byBin.get(c.bin) || []), c]);
  put(
    el("h1", {}, `Feature ${f.id}`),
    el("div", { class: "stats" },
      el("span", {}, "density ", el("b", {}, pct(f.density))), el("span", {}, "fired on ", el("b", {}, f.count), " tokens"),
      el("span", {}, "mean ", el("b", {}, fmt(f.mean_activation))), el("span", {}, "max ", el("b", {}, fmt(f.max_activation))),
      el("span", {}, featureLink(Math.max(0, f.id - 1), "← previous"), " ", featureLink(f.id + 1, "next →"))),
    f.explanations.length ? el("table", { id: "explanations" },
      el("thead", {}, el("tr", {}, ["explanation", "by", "detection AUROC [95% CI]", "fuzzing AUROC", "balanced acc."]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, f.explanations.map((e) => el("tr", {},
        el("td", {}, el("b", {}, e.text)), el("td", { class: "muted" }, `${e.method} (scored by ${e.scorer})`),
        el("td", { class: "num" }, `${fmt(e.detection_auroc, 2)} [${fmt(e.detection_auroc_low, 2)}, ${fmt(e.detection_auroc_high, 2)}]`),
        el("td", { class: "num" }, fmt(e.fuzzing_auroc, 2)), el("td", { class: "num" }, fmt(e.detection_balanced_accuracy, 2))))))
      : el("p", { class: "muted" }, "not explained yet: featurelens explain ATLAS"),
    el("h2", {}, "activation histogram (non-zero)"),
    f.histogram.counts.length ? histogram(f.histogram.edges, f.histogram.counts, { log: true })
      : el("p", { class: "muted" }, "never fired"),
    el("div", { class: "columns" },
      el("div", { class: "panel" }, el("h2", {}, "promotes"), tokenList(f.output_top, "pos"),
        el("h2", {}, "suppresses"), tokenList(f.output_bottom, "neg")),
      el("div", { class: "panel" }, el("h2", {}, "co-occurring"),
        f.cooccurring.map((n) => el("span", { class: "pill" }, featureLink(n.feature), ` J ${fmt(n.value, 2)}`)),
        el("h2", {}, "nearest (decoder cosine)"),
        f.nearest.map((n) => el("span", { class: "pill" }, featureLink(n.feature), ` ${fmt(n.value, 2)}`)))),
    el("h2", {}, "top activating contexts"),
    el("div", { id: "top-contexts", class: "panel" }, f.top.map((c) => contextLine(c, scale))),
    el("h2", {}, "quantile samples (low → high)"),
    el("div", { id: "quantiles", class: "panel" }, [...byBin.entries()].map(([bin, contexts]) =>
      el("div", {}, el("span", { class: "muted" }, `bin ${bin}`), contexts.map((c) => contextLine(c, scale))))),
    f.input_top.length ? el("div", {}, el("h2", {}, "reads (input embeddings)"), tokenList(f.input_top, "")) : null);
}

async function tryText() {
  const text = el("textarea", { id: "try-text" }, "The quick brown fox jumps over the lazy dog.");
  const output = el("div", { id: "try-output", class: "panel" });
  const details = el("div", { id: "try-details" });
  const run = async () => {
    output.replaceChildren(el("p", { class: "muted" }, "running (the model loads on first use)…"));
    try {
      const result = await api("/api/activations", { text: text.value, top_n: 5 });
      const scale = Math.max(0, ...result.tokens.map((t) => (t.features[0] ? t.features[0].activation : 0)));
      output.replaceChildren(el("div", { class: "context" }, result.tokens.map((token) => {
        const best = token.features[0] ? token.features[0].activation : 0;
        const span = el("span", { class: "tok clickable" + (token.outlier ? " outlier" : ""),
          title: token.outlier ? "norm outlier (attention sink): not encoded" : token.features.map((f) => `#${f.id} ${fmt(f.activation)}`).join("\n"),
          onclick: () => details.replaceChildren(el("h2", {}, `features on “${shown(token.text)}”`),
            token.features.length ? token.features.map((f) => el("div", { class: "token-feature" },
              featureLink(f.id), ` ${fmt(f.activation)}`)) : el("p", { class: "muted" }, "no feature fires here")) },
        shown(token.text));
        if (best > 0) span.style.background = `rgba(234, 88, 12, ${(0.15 + 0.85 * best / scale).toFixed(3)})`;
        return span;
      })));
    } catch (error) {
      output.replaceChildren(el("p", { class: "error" }, error.message));
    }
  };
  put(el("h1", {}, "Try your own text"),
    el("p", { class: "muted" }, "Each token is shaded by its strongest feature; click a token to see its features."),
    text, el("p", {}, el("button", { id: "try-run", onclick: run }, "show features")), output, details);
}

async function steer() {
  const prompt = el("input", { type: "text", id: "steer-prompt", value: "The best thing about Python is", size: 60 });
  const rows = el("div", { id: "steer-features" });
  const addRow = (id = "0", strength = "10") => rows.append(el("div", { class: "steer-row" },
    "feature ", el("input", { type: "number", class: "steer-id", value: id, min: 0 }),
    " strength ", el("input", { type: "number", class: "steer-strength", value: strength, step: "any" })));
  addRow(new URLSearchParams(location.hash.split("?")[1] || "").get("feature") || "0");
  const mode = el("select", { id: "steer-mode" }, el("option", { value: "add" }, "add decoder direction"),
    el("option", { value: "clamp" }, "clamp feature value"));
  const tokens = el("input", { type: "number", id: "steer-tokens", value: 24, min: 1, max: 64 });
  const output = el("div", { id: "steer-output" });
  const run = async () => {
    output.replaceChildren(el("p", { class: "muted" }, "generating (the model loads on first use)…"));
    const features = [...rows.querySelectorAll(".steer-row")].map((row) => ({
      id: Number(row.querySelector(".steer-id").value), strength: Number(row.querySelector(".steer-strength").value),
    }));
    try {
      const result = await api("/api/steer", { prompt: prompt.value, features, mode: mode.value,
        max_new_tokens: Number(tokens.value) });
      output.replaceChildren(el("div", { class: "columns" },
        el("div", { class: "panel" }, el("h2", {}, "without"), el("p", { id: "steer-baseline" }, result.prompt,
          el("b", {}, result.baseline))),
        el("div", { class: "panel" }, el("h2", {}, "with the intervention"), el("p", { id: "steer-steered" },
          result.prompt, el("b", {}, result.steered)))));
    } catch (error) {
      output.replaceChildren(el("p", { class: "error" }, error.message));
    }
  };
  put(el("h1", {}, "Steering playground"),
    el("p", { class: "muted" }, "Greedy generation from the prompt, without and with the features edited at their hook."),
    el("p", {}, "prompt ", prompt), rows, el("p", {}, el("button", { onclick: () => addRow() }, "+ feature")),
    el("p", {}, mode, " new tokens ", tokens, " ", el("button", { id: "steer-run", onclick: run }, "generate")), output);
}

async function searchView(query) {
  const result = await api(`/api/search?q=${encodeURIComponent(query)}`);
  put(el("h1", {}, `Features matching “${query}”`),
    result.results.length ? el("table", { id: "search-results" },
      el("thead", {}, el("tr", {}, el("th", {}, "id"), el("th", {}, "density"), el("th", {}, "top tokens"),
        el("th", {}, "promotes"))),
      el("tbody", {}, result.results.map((hit) => el("tr", {}, el("td", {}, featureLink(hit.id)),
        el("td", { class: "num" }, pct(hit.density)), el("td", {}, hit.top_tokens.map((t) => el("span", { class: "pill" }, shown(t)))),
        el("td", {}, hit.output_tokens.map((t) => el("span", { class: "pill" }, shown(t))))))))
      : el("p", { class: "muted" }, "no feature matches"));
}

const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function circuitGraph(graph) {  // nodes placed by layer (columns), edges weighted by their effect
  const nodes = [...graph.nodes].sort((a, b) => a.layer - b.layer || a.kind.localeCompare(b.kind) || a.index - b.index);
  const layers = [...new Set(nodes.map((n) => n.layer))];
  const columnOf = new Map(layers.map((layer, i) => [layer, i]));
  const rows = new Map();
  const place = new Map();
  const gapX = 120, gapY = 46, pad = 40;
  for (const node of nodes) {
    const column = columnOf.get(node.layer);
    const row = rows.get(column) || 0;
    rows.set(column, row + 1);
    place.set(node.id, { x: pad + column * gapX, y: pad + row * gapY });
  }
  const tallest = Math.max(1, ...rows.values());
  const width = pad * 2 + layers.length * gapX + 60, height = pad * 2 + tallest * gapY;
  place.set("logits", { x: pad + layers.length * gapX, y: pad + ((tallest - 1) * gapY) / 2 });
  const svg = svgEl("svg", { class: "circuit", width, height, viewBox: `0 0 ${width} ${height}` });
  const strongest = Math.max(1e-9, ...graph.edges.map((e) => Math.abs(e.weight)));
  for (const edge of graph.edges) {
    const from = place.get(edge.source), to = place.get(edge.target);
    if (!from || !to) continue;
    const line = svgEl("line", {
      x1: from.x, y1: from.y, x2: to.x, y2: to.y, class: edge.weight >= 0 ? "edge pos" : "edge neg",
      "stroke-width": 0.5 + 5 * Math.abs(edge.weight) / strongest,
    });
    const estimate = edge.attribution == null ? "" : `, edge attribution ${fmt(edge.attribution)}`;
    line.append(svgEl("title", {}, `${edge.source} → ${edge.target}: ${fmt(edge.weight)}${estimate}`));
    svg.append(line);
  }
  for (const node of nodes) {
    const { x, y } = place.get(node.id);
    const effect = node.exact_effect ?? node.attribution_effect;
    const group = svgEl("g", { class: `node ${node.kind}${node.page !== null ? " linked" : ""}`, "data-id": node.id });
    group.append(svgEl("circle", { cx: x, cy: y, r: 9 + 12 * Math.min(1, Math.abs(effect ?? 0)) }));
    group.append(svgEl("text", { x, y: y + 26, "text-anchor": "middle" }, node.id));
    group.append(svgEl("title", {}, `${node.id} (${node.kind}, ${node.hook}): effect ${fmt(effect)}` +
      (node.page !== null ? " — click for its atlas page" : " — not in this atlas")));
    group.addEventListener("click", () => {
      if (node.page !== null) location.hash = `#/feature/${node.page}`;
      else document.getElementById("circuit-note").textContent =
        `${node.id} has no page in this atlas (it maps ${graph.atlas_hook}); ` +
        (node.kind === "neuron" ? `build one with featurelens atlas layers.${node.layer}.mlp_neurons`
          : "heads have no atlas pages yet");
    });
    svg.append(group);
  }
  const sink = place.get("logits");
  svg.append(svgEl("rect", { x: sink.x - 26, y: sink.y - 12, width: 52, height: 24, class: "sink" }));
  svg.append(svgEl("text", { x: sink.x, y: sink.y + 4, "text-anchor": "middle" }, "logits"));
  return svg;
}

async function circuitView() {
  const graph = await api("/api/circuit");
  const f = graph.faithfulness;
  put(
    el("h1", {}, `circuit: ${graph.task.split("/").pop()}`),
    el("p", { class: "muted" }, `${graph.model} · ${graph.prompts} prompt pairs, e.g. “${graph.example.clean}” → ` +
      `“${graph.example.correct}” · ${graph.metric}`),
    el("div", { class: "stats" },
      el("span", {}, "clean metric ", el("b", {}, fmt(graph.clean_metric))),
      el("span", {}, "corrupted ", el("b", {}, fmt(graph.corrupt_metric))),
      el("span", {}, "faithfulness ", el("b", { id: "faithfulness" }, fmt(f.faithfulness))),
      el("span", {}, "complement ", el("b", {}, fmt(f.complement))),
      graph.head_rank_correlation === null ? null
        : el("span", {}, "attribution vs exact (Spearman, heads) ", el("b", {}, fmt(graph.head_rank_correlation)))),
    el("div", { class: "panel" }, circuitGraph(graph)),
    el("p", { id: "circuit-note", class: "muted" }, "node size: effect (1 = the whole clean-corrupt gap); " +
      "edge width: how much of the downstream node's change the upstream node restores; click a node."),
    graph.faithfulness_by_heads.length === 0 ? null : el("p", {}, "faithfulness of the top-k heads alone: " +
      graph.faithfulness_by_heads.map((p) => `${p.heads}: ${fmt(p.faithfulness, 2)}`).join(", ")),
    el("table", {},
      el("tr", {}, ...["node", "kind", "layer", "exact effect", "attribution effect", "atlas"].map((h) => el("th", {}, h))),
      ...graph.nodes.map((n) => el("tr", {},
        el("td", {}, n.id), el("td", {}, n.kind), el("td", { class: "num" }, n.layer),
        el("td", { class: "num" }, fmt(n.exact_effect)), el("td", { class: "num" }, fmt(n.attribution_effect)),
        el("td", {}, n.page === null ? "—" : featureLink(n.page))))),
  );
}

const LAYER_COLUMNS = [  // the layer x statistic table: [field, heading, format]
  ["width", "units", String], ["fire_rate", "firing", pct], ["zero_fraction", "exactly 0", pct],
  ["near_zero_fraction", "near 0", pct], ["kurtosis", "kurtosis (pooled)", fmt],
  ["median_unit_kurtosis", "median unit kurtosis", fmt], ["max_over_median", "max / median |x|", fmt],
  ["dead", "dead", String], ["always_on", "always on", String], ["outlier_units", "outlier", String],
  ["massive_units", "massive", String], ["positional_units", "positional", String], ["token_units", "token", String],
  ["previous_token_units", "previous token", String], ["bigram_units", "bigram", String],
];

function massiveMap(map, logTop) {  // layer x channel heat map of log10(max |x| / median |x|)
  const cell = 22, left = 46, top = 34;
  const width = Math.max(360, left + map.channels.length * cell + 4), height = top + map.layers.length * cell + 4;
  const svg = svgEl("svg", { class: "heatmap", width, height, viewBox: `0 0 ${width} ${height}`, "data-point": map.point });
  map.channels.forEach((channel, j) => svg.append(svgEl("text", {
    x: left + j * cell + cell / 2, y: top - 6, "text-anchor": "middle", class: "channel" }, channel)));
  map.layers.forEach((layer, i) => {
    svg.append(svgEl("text", { x: left - 6, y: top + i * cell + cell / 2 + 4, "text-anchor": "end" }, `L${layer}`));
    map.channels.forEach((channel, j) => {
      const ratio = map.ratio[i][j];
      const strength = ratio === null ? 0 : Math.max(0, Math.min(1, Math.log10(Math.max(ratio, 1)) / logTop));
      const rect = svgEl("rect", { x: left + j * cell, y: top + i * cell, width: cell - 1, height: cell - 1,
        class: ratio === null ? "cell unknown" : "cell", "data-hook": map.hooks[i], "data-channel": channel });
      if (ratio !== null) rect.setAttribute("fill", `rgba(194, 65, 12, ${(0.04 + 0.96 * strength).toFixed(3)})`);
      rect.append(svgEl("title", {}, `${map.hooks[i]} channel ${channel}: max |x| = ` +
        (ratio === null ? "? (median |x| is 0)" : `${fmt(ratio)} × median |x|`)));
      svg.append(rect);
    });
  });
  svg.append(svgEl("text", { x: left, y: 12 }, `${map.point}: channels (the largest of some layer)`));
  return svg;
}

function unitLink(unit, atlasHook) {
  return unit.page === null
    ? el("span", { class: "muted", title: `no page in this atlas (it maps ${atlasHook})` }, `#${unit.unit}`)
    : el("a", { href: `#/feature/${unit.page}`, class: "unit-link", title: "this unit's page in the atlas" }, `#${unit.unit}`);
}

const tokenCell = (text, ...scores) => (text ? [el("span", { class: "pill" }, shown(text)), ` (${scores.join(", ")})`] : "—");

async function neuronView() {
  const report = await api("/api/neurons");
  const points = [...new Set(report.layers.map((row) => row.point))];
  const logTop = Math.max(1, ...report.maps.flatMap((m) => m.ratio.flat().filter((r) => r !== null).map((r) => Math.log10(r))));
  put(
    el("h1", {}, "Neurons"),
    el("div", { class: "stats" },
      el("span", {}, "model ", el("b", {}, report.meta.model || "—")),
      el("span", {}, el("b", {}, report.meta.rows.toLocaleString()), ` rows (${report.meta.source})`),
      el("span", {}, el("b", {}, report.meta.hooks.length), " hooks")),
    el("p", { class: "muted" }, `Units link to their pages when the served atlas is a neuron atlas of their hook ` +
      `(this one maps ${report.atlas_kind === "neurons" ? "the neurons" : "a dictionary"} of ${report.atlas_hook}).`),
    points.map((point) => [
      el("h2", {}, `${point}: layer × statistic`),
      el("div", { class: "wide" }, el("table", { class: "neuron-layers", "data-point": point },
        el("thead", {}, el("tr", {}, el("th", {}, "layer"), LAYER_COLUMNS.map(([, label]) => el("th", {}, label)))),
        el("tbody", {}, report.layers.filter((row) => row.point === point).sort((a, b) => a.layer - b.layer)
          .map((row) => el("tr", {}, el("td", { title: row.hook }, row.layer),
            LAYER_COLUMNS.map(([key, , f]) => el("td", { class: "num" }, row[key] === null ? "—" : f(row[key])))))))),
    ]),
    el("h2", {}, "massive activations: max |x| / median |x| of the layer, per channel"),
    el("div", { class: "panel", id: "massive-maps" }, report.maps.map((map) => massiveMap(map, logTop)),
      el("p", { class: "muted" }, `colour: log scale from 1× (palest) to ${fmt(10 ** logTop)}× the layer's median |x| ` +
        "(darkest); grey: the median is 0. Hover a cell for its value.")),
    el("h3", {}, `the largest entries (top ${report.massive.length})`),
    report.massive.length ? el("table", { id: "massive" },
      el("thead", {}, el("tr", {}, ["hook", "unit", "value", "× median", "position", "token"].map((h) => el("th", {}, h)))),
      el("tbody", {}, report.massive.map((m) => el("tr", {},
        el("td", {}, m.hook), el("td", {}, unitLink(m, report.atlas_hook)), el("td", { class: "num" }, fmt(m.value)),
        el("td", { class: "num" }, fmt(m.multiple_of_median)), el("td", { class: "num" }, m.position),
        el("td", {}, el("span", { class: "pill" }, shown(m.token_text)))))))
      : el("p", { class: "muted" }, "no massive activation (none reached the first massive multiple of the median)"),
    el("h2", {}, "notable units"),
    report.notable.length ? null : el("p", { class: "muted" }, "no unit is notable"),
    report.notable.map((group) => [
      el("h3", {}, `${group.kind} (top ${group.units.length})`),
      el("table", { class: "notable", "data-kind": group.kind },
        el("thead", {}, el("tr", {}, ["unit", "hook", "firing", "kurtosis", "max / median", "position R²", "token (coverage, lift)",
          "previous token (lift)", "bigram (lift)"].map((h) => el("th", {}, h)))),
        el("tbody", {}, group.units.map((u) => el("tr", { "data-hook": u.hook, "data-unit": u.unit },
          el("td", {}, unitLink(u, report.atlas_hook)), el("td", {}, u.hook), el("td", { class: "num" }, pct(u.fire_rate)),
          el("td", { class: "num" }, fmt(u.kurtosis)), el("td", { class: "num" }, fmt(u.max_over_median)),
          el("td", { class: "num" }, fmt(u.position_r2)),
          el("td", {}, tokenCell(u.token_text, fmt(u.token_coverage, 2), fmt(u.token_lift, 2))),
          el("td", {}, tokenCell(u.previous_token_text, fmt(u.previous_lift, 2))),
          el("td", {}, tokenCell(u.bigram_text, fmt(u.bigram_lift, 2))))))),
    ]),
  );
}

const PROBE_LINES = [["dense", "dense probe"], ["majority", "majority"], ["shuffled", "shuffled labels"]];

function accuracyChart(target) {  // k-sparse score against k (log2), the dense probe and baselines as lines
  const width = 360, height = 214, left = 52, right = 14, top = 10, bottom = 58;
  const sparse = target.scores.filter((s) => s.k !== null && s.mean !== null);
  const lines = PROBE_LINES.map(([probe, label]) => [target.scores.find((s) => s.probe === probe), probe, label])
    .filter(([score]) => score && score.mean !== null);
  const values = [...sparse, ...lines.map(([score]) => score)].map((s) => s.mean);
  const low = Math.max(-1, Math.min(0, ...values)), high = Math.max(1, ...values);
  const logs = sparse.map((s) => Math.log2(s.k));
  const first = Math.min(...logs), span = Math.max(...logs) - first;
  const x = (k) => left + (span > 0 ? (Math.log2(k) - first) / span : 0.5) * (width - left - right);
  const y = (v) => top + (1 - (Math.max(low, v) - low) / (high - low)) * (height - top - bottom);
  const svg = svgEl("svg", { class: "probe-chart", width, height, viewBox: `0 0 ${width} ${height}`,
    "data-target": target.name });
  svg.append(svgEl("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis" }));
  svg.append(svgEl("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, class: "axis" }));
  for (const tick of [low, (low + high) / 2, high]) {
    svg.append(svgEl("text", { x: left - 4, y: y(tick) + 3, "text-anchor": "end" }, fmt(tick, 2)));
  }
  const middle = top + (height - top - bottom) / 2;
  svg.append(svgEl("text", { x: 10, y: middle, "text-anchor": "middle", transform: `rotate(-90 10 ${middle})` },
    target.metric));
  for (const [score, probe, label] of lines) {
    const line = svgEl("line", { x1: left, x2: width - right, y1: y(score.mean), y2: y(score.mean), class: `baseline ${probe}` });
    line.append(svgEl("title", {}, `${label}: ${fmt(score.mean)} ± ${fmt(score.std, 2)}`));
    svg.append(line);
  }
  svg.append(svgEl("polyline", { class: "sparse", points: sparse.map((s) => `${x(s.k)},${y(s.mean)}`).join(" ") }));
  for (const s of sparse) {
    const dot = svgEl("circle", { cx: x(s.k), cy: y(s.mean), r: 3.5, class: "sparse", "data-k": s.k });
    dot.append(svgEl("title", {}, `k = ${s.k}: ${fmt(s.mean)} ± ${fmt(s.std, 2)}`));
    svg.append(dot, svgEl("text", { x: x(s.k), y: height - bottom + 13, "text-anchor": "middle" }, s.k));
  }
  svg.append(svgEl("text", { x: (left + width - right) / 2, y: height - bottom + 27, "text-anchor": "middle" },
    "k (units, log scale)"));
  const legend = [["sparse", "k-sparse", null], ...lines.map(([score, probe, label]) => [probe, label, score.mean])];
  legend.forEach(([probe, label, mean], i) => {  // two rows of two under the axis
    const lx = left + (i % 2) * 150, ly = height - 18 + Math.floor(i / 2) * 13;
    svg.append(svgEl("line", { x1: lx, x2: lx + 16, y1: ly - 3, y2: ly - 3, class: `key ${probe}` }),
      svgEl("text", { x: lx + 20, y: ly }, mean === null ? label : `${label} ${fmt(mean, 2)}`));
  });
  return svg;
}

async function probeView() {
  const { probes, atlas_hook: atlasHook, atlas_kind: atlasKind } = await api("/api/probe");
  put(
    el("h1", {}, "Probes"),
    el("p", { class: "muted" }, `Units link to their pages when the served atlas maps them: a neuron atlas of the ` +
      `probe's hook for its channels, an atlas of the probe's dictionary for its features (this atlas maps ` +
      `${atlasKind === "neurons" ? "the neurons" : "a dictionary"} of ${atlasHook}).`),
    probes.map((probe) => el("section", { class: "probe", "data-hook": probe.hook },
      el("h2", {}, `${probe.hook}: ${probe.unit_kind === "feature" ? "dictionary features" : "units"}`),
      el("div", { class: "stats" },
        el("span", {}, el("b", {}, probe.units.toLocaleString()), ` ${probe.unit_kind}s`),
        el("span", {}, el("b", {}, probe.rows.toLocaleString()), ` rows, ${probe.documents} documents (${probe.source})`),
        probe.model ? el("span", {}, "model ", el("b", {}, probe.model)) : null,
        probe.dictionary ? el("span", {}, "dictionary ", el("b", {}, probe.dictionary)) : null,
        el("span", { class: "muted" }, probe.folder)),
      el("div", { class: "probe-targets" }, probe.targets.map((target) => el("div", { class: "panel probe-target",
        "data-target": target.name },
      el("h3", {}, target.name),
      el("p", { class: "muted" }, `${target.kind}, ${target.rows.toLocaleString()} rows` +
        (Object.keys(target.balance).length ? ` (${Object.entries(target.balance).map(([c, n]) => `${c}: ${n}`).join(", ")})` : "") +
        `, ${target.folds} folds` + (target.skipped_folds.length ? `, ${target.skipped_folds.length} skipped` : "")),
      accuracyChart(target),
      el("table", { class: "probe-units" },
        el("thead", {}, el("tr", {}, ["rank", probe.unit_kind, `score (${probe.settings.ranking ?? "ranking"})`,
          `picked at k = ${target.largest_k ?? "—"}`].map((h) => el("th", {}, h)))),
        el("tbody", {}, target.units.map((u) => el("tr", { "data-unit": u.unit },
          el("td", { class: "num" }, u.rank + 1), el("td", {}, unitLink(u, atlasHook)),
          el("td", { class: "num" }, fmt(u.score)), el("td", { class: "num" }, `${u.folds_picked} / ${target.folds}`)))))))))),
  );
}

// viridis, as in the PNGs (featurelens.compare.plots): reversed for distances so "alike" is always yellow
const VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];
const compareState = { measure: null };

function viridis(t) {
  const x = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const [a, b] = [VIRIDIS[i], VIRIDIS[i + 1]].map((h) => [1, 3, 5].map((k) => parseInt(h.slice(k, k + 2), 16)));
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * (x - i))).join(",")})`;
}

function hookLabels(hooks) {  // layers.N.point hooks of one point kind: N under "layer (point)", as in the PNGs
  const layered = hooks.map((h) => h.match(/^layers\.(\d+)\.(.+)$/));
  const points = new Set(layered.filter(Boolean).map((m) => m[2]));
  if (points.size !== 1) return [hooks, "hook"];
  return [hooks.map((h, i) => (layered[i] ? layered[i][1] : h)), `layer (${[...points][0]})`];
}

function compareMap(map, grid, measure, alpha) {  // hooks_a rows (layer 0 at the bottom) x hooks_b columns
  const [rowLabels, rowTitle] = hookLabels(map.hooks_a), [colLabels, colTitle] = hookLabels(map.hooks_b);
  const long = (labels) => Math.max(...labels.map((l) => l.length)) > 4;
  const cell = Math.max(10, Math.min(36, Math.floor(480 / Math.max(map.hooks_a.length, map.hooks_b.length))));
  const left = long(rowLabels) ? 150 : 52, top = 8, bottom = long(colLabels) ? 150 : 42;
  // at least as wide as the axis titles under a narrow map
  const width = Math.max(280, left + map.hooks_b.length * cell + 8), height = top + map.hooks_a.length * cell + bottom;
  const svg = svgEl("svg", { class: "compare-map", width, height, viewBox: `0 0 ${width} ${height}`,
    "data-map": map.name, "data-measure": measure.name });
  const span = measure.high - measure.low || 1;
  const rows = map.hooks_a.length;
  map.hooks_a.forEach((hookA, i) => map.hooks_b.forEach((hookB, j) => {
    const value = grid.value[i][j], p = grid.p_value[i][j];
    const marked = value !== null && p !== null && !grid.significant[i][j];
    const x = left + j * cell, y = top + (rows - 1 - i) * cell;
    const rect = svgEl("rect", { x, y, width: cell - 1, height: cell - 1, "data-row": i, "data-col": j,
      class: "cell" + (value === null ? " unknown" : "") + (marked ? " not-significant" : "") });
    if (value !== null) {
      const t = (value - measure.low) / span;
      rect.setAttribute("fill", viridis(measure.kind === "distance" ? 1 - t : t));
    }
    const test = p === null ? "no permutation test" : `p = ${fmt(p)} (${grid.significant[i][j] ? "significant" : "not significant"} at ${alpha})`;
    rect.append(svgEl("title", {}, `${hookA} × ${hookB}\n${measure.name} = ${fmt(value)}\n${test}\n` +
      `null ${fmt(grid.null_mean[i][j])} ± ${fmt(grid.null_std[i][j])}` +
      (grid.value_rows[i][j] === null ? "" : `\n${grid.value_rows[i][j].toLocaleString()} rows`)));
    svg.append(rect);
    if (marked) svg.append(svgEl("circle", { cx: x + (cell - 1) / 2, cy: y + (cell - 1) / 2, r: Math.max(1.5, cell * 0.15), class: "ns" }));
  }));
  const every = Math.ceil(Math.max(rows, map.hooks_b.length) / 32);
  rowLabels.forEach((label, i) => { if (i % every === 0) svg.append(svgEl("text", {
    x: left - 4, y: top + (rows - 1 - i) * cell + cell / 2 + 3, "text-anchor": "end" }, label)); });
  colLabels.forEach((label, j) => {
    if (j % every !== 0) return;
    const x = left + j * cell + cell / 2, y = top + rows * cell + 12;
    svg.append(long(colLabels) ? svgEl("text", { x, y: y - 6, "text-anchor": "end", transform: `rotate(-90 ${x} ${y - 6})` }, label)
      : svgEl("text", { x, y, "text-anchor": "middle" }, label));
  });
  const middle = top + (rows * cell) / 2;
  svg.append(svgEl("text", { x: 10, y: middle, "text-anchor": "middle", class: "axis-title",
    transform: `rotate(-90 10 ${middle})` }, `${map.a}: ${rowTitle}`));
  svg.append(svgEl("text", { x: left + (map.hooks_b.length * cell) / 2, y: height - 6, "text-anchor": "middle",
    class: "axis-title" }, `${map.b}: ${colTitle}`));
  return svg;
}

function colourKey(measure, view) {  // the colour ramp (alike at the yellow end) and the dot's meaning
  const width = 220, svg = svgEl("svg", { class: "compare-key", width: width + 520, height: 34 });
  for (let k = 0; k < 44; k++) {
    const t = k / 43;
    svg.append(svgEl("rect", { x: k * 5, y: 2, width: 5, height: 12, fill: viridis(measure.kind === "distance" ? 1 - t : t) }));
  }
  svg.append(svgEl("text", { x: 0, y: 28 }, fmt(measure.low)), svgEl("text", { x: width, y: 28, "text-anchor": "end" }, fmt(measure.high)));
  svg.append(svgEl("rect", { x: width + 14, y: 2, width: 12, height: 12, fill: viridis(0.6) }),
    svgEl("circle", { cx: width + 20, cy: 8, r: 2.5, class: "ns" }));
  svg.append(svgEl("text", { x: width + 32, y: 12 }, `not significant (p > ${view.alpha}, ${view.correction || "corrected"})`));
  svg.append(svgEl("rect", { x: width + 14, y: 18, width: 12, height: 12, class: "unknown" }),
    svgEl("text", { x: width + 32, y: 28 }, "no value"));
  return svg;
}

function compareMaps(view) {
  const measure = view.measures.find((m) => m.name === compareState.measure) || view.measures[0];
  compareState.measure = measure.name;
  const alike = measure.kind === "distance" ? "lower = more alike" : "higher = more alike";
  return [
    el("div", { class: "panel", id: "compare-measure-info", "data-measure": measure.name },
      el("b", {}, measure.name), ` — ${measure.kind} (${alike})`, measure.metric ? ", a metric" : ", not a metric",
      el("p", {}, measure.description || ""),
      Object.keys(measure.options).length ? el("p", { class: "muted" }, "options: " +
        Object.entries(measure.options).map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(", ")) : null,
      colourKey(measure, view)),
    el("div", { class: "compare-maps" }, view.maps.map((map) => {
      const grid = map.grids.find((g) => g.measure === measure.name);
      return el("section", { class: "compare-section", "data-map": map.name },
        el("h3", {}, map.title),
        compareMap(map, grid, measure, view.alpha),
        grid.png ? el("a", { href: grid.png, class: "muted", target: "_blank" }, `${map.name}_${measure.name}.png`) : null);
    })),
  ];
}

async function compareView() {
  const view = await api("/api/compare");
  const maps = el("div", { id: "compare-body" }, compareMaps(view));
  const select = el("select", { id: "compare-measure", onchange: (event) => {
    compareState.measure = event.target.value;
    maps.replaceChildren(...compareMaps(view).filter(Boolean));
  } }, view.measures.map((m) => el("option", { value: m.name }, `${m.name} (${m.kind})`)));
  select.value = compareState.measure;
  put(
    el("h1", {}, "Layer × layer maps"),
    el("div", { class: "stats", id: "compare-stats" },
      el("span", {}, el("b", {}, view.rows.toLocaleString()), " rows"),
      view.null_rows === null ? null : el("span", {}, "null: ", el("b", {}, view.permutations), " permutations of ",
        el("b", {}, view.null_rows.toLocaleString()), " rows"),
      view.null_rows === null ? el("span", {}, el("b", {}, view.permutations), " permutations") : null,
      el("span", {}, "alpha ", el("b", {}, view.alpha), view.correction ? ` (${view.correction})` : ""),
      view.alignment ? el("span", {}, "alignment: ", el("b", {}, view.alignment)) : null),
    el("p", {}, el("label", {}, "measure ", select), el("span", { class: "muted" }, `  ${view.folder}`)),
    maps,
  );
}

async function render() {
  const hash = decodeURIComponent(location.hash.slice(1)) || "/";
  try {
    let match;
    if ((match = hash.match(/^\/feature\/(\d+)/))) await featurePage(Number(match[1]));
    else if (hash.startsWith("/try")) await tryText();
    else if (hash.startsWith("/steer")) await steer();
    else if ((match = hash.match(/^\/search\/(.+)$/))) await searchView(match[1]);
    else if (hash.startsWith("/circuit")) await circuitView();
    else if (hash.startsWith("/neurons")) await neuronView();
    else if (hash.startsWith("/probe")) await probeView();
    else if (hash.startsWith("/compare")) await compareView();
    else await overview();
  } catch (error) {
    put(el("p", { class: "error" }, error.message));
  }
}

document.getElementById("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = document.getElementById("search").value.trim();
  if (query) location.hash = `#/search/${encodeURIComponent(query)}`;
});
window.addEventListener("hashchange", render);
api("/api/meta").then((meta) => {  // the circuit, neuron, probe and compare links only when they are served
  const nav = document.querySelector("nav");
  if (meta.circuit) nav.append(el("a", { href: "#/circuit", id: "circuit-link" }, "circuit"));
  if (meta.neurons) nav.append(el("a", { href: "#/neurons", id: "neurons-link" }, "neurons"));
  if (meta.probe) nav.append(el("a", { href: "#/probe", id: "probe-link" }, "probes"));
  if (meta.compare) nav.append(el("a", { href: "#/compare", id: "compare-link" }, "layer maps"));
}).catch(() => {});
render();
