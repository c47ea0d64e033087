// Experiment: live numbers, curves, conditions, log and pictures from the server's events.
"use strict";

(() => {
  const { data, text, el, live, chart } = lanex;
  const name = data.name;
  const MAX_LOG_LINES = 5000;

  // -- curves -----------------------------------------------------------------------------------
  const steps = new Map(data.steps.map(([step, loss, lr]) => [step, [loss, lr]]));  // a resumed run re-logs steps
  function stepColumns() {
    const xs = Array.from(steps.keys()).sort((a, b) => a - b);
    return [xs, xs.map((x) => steps.get(x)[0]), xs.map((x) => steps.get(x)[1])];
  }
  let columns = stepColumns();
  const lossChart = chart(document.getElementById("chart-loss"), "step", [{ label: "loss" }], [columns[0], columns[1]]);
  const lrChart = chart(document.getElementById("chart-lr"), "step", [{ label: "lr", stroke: "#2ca02c" }],
                        [columns[0], columns[2]]);

  function validationColumns(history) {
    return [history.map((h) => h.epoch), history.map((h) => h.accuracy), history.map((h) => h.fp),
            history.map((h) => h.fn)];
  }
  const valChart = chart(document.getElementById("chart-val"), "epoch",
                         [{ label: "accuracy" }, { label: "FP", stroke: "#d62728" }, { label: "FN", stroke: "#ff7f0e" }],
                         validationColumns(data.validation));

  const samples = data.samples.slice();
  function sampleColumns() {
    const points = samples.filter((s) => s.step !== null && s.step !== undefined);
    return [points.map((s) => s.step), points.map((s) => s.rate),
            points.map((s) => (s.wait === null || s.wait === undefined ? null : 100 * s.wait)),
            points.map((s) => s.gpuUtil), points.map((s) => s.gpuMem)];
  }
  let sampled = sampleColumns();
  const rateChart = chart(document.getElementById("chart-rate"), "step",
                          [{ label: "images/s" }, { label: "data wait %", stroke: "#9467bd", scale: "%" }],
                          [sampled[0], sampled[1], sampled[2]],
                          { axes: [{ label: "step" }, { size: 60 }, { side: 1, scale: "%", grid: { show: false } }] });
  const gpuChart = chart(document.getElementById("chart-gpu"), "step",
                         [{ label: "GPU %" }, { label: "GiB", stroke: "#8c564b", scale: "GiB" }],
                         [sampled[0], sampled[3], sampled[4]],
                         { axes: [{ label: "step" }, { size: 60 }, { side: 1, scale: "GiB", grid: { show: false } }] });

  // -- numbers --------------------------------------------------------------------------------
  function showDetail(detail) {
    const row = detail.row;
    const badge = document.getElementById("phase");
    text(badge, row.phase);
    badge.className = `phase ${row.phaseClass}`;
    text(document.getElementById("message"), row.message);
    for (const node of document.querySelectorAll("[data-field]")) text(node, row[node.dataset.field]);
    document.getElementById("fill").style.width = `${(100 * row.fraction).toFixed(1)}%`;
    text(document.getElementById("progress-text"), detail.progressText);
    const wait = (detail.progress || {}).dataWaitFraction;
    text(document.getElementById("data-wait"), wait === null || wait === undefined ? "-" : `${Math.round(100 * wait)}%`);
    showGpus(detail.gpus || []);
    valChart.setData(validationColumns(detail.validation || []));
    if (detail.sample && !samples.some((s) => s.t === detail.sample.t && s.step === detail.sample.step)) {
      samples.push(detail.sample);
      sampled = sampleColumns();
      rateChart.setData([sampled[0], sampled[1], sampled[2]]);
      gpuChart.setData([sampled[0], sampled[3], sampled[4]]);
    }
    showTimeline(detail.timeline || []);
    if (detail.events) showEvents(detail.events);
    showResults(detail.results || []);
    showImages(detail.images || {});
  }

  function showGpus(gpus) {
    document.getElementById("gpus-card").hidden = gpus.length === 0;
    document.getElementById("gpu-figure").hidden = gpus.length === 0;
    const list = document.getElementById("gpus");
    list.replaceChildren(...gpus.map((g) => {
      let line = `rank ${g.rank}: ${Math.round(g.utilizationPercent || 0)}%`;
      if (g.memoryUsedBytes !== null && g.memoryTotalBytes) {
        line += `, ${(g.memoryUsedBytes / 2 ** 30).toFixed(1)}/${(g.memoryTotalBytes / 2 ** 30).toFixed(1)} GiB`;
      }
      return el("li", { textContent: line });
    }));
  }

  function showTimeline(entries) {
    const body = document.querySelector("#timeline tbody");
    body.replaceChildren(...entries.map((c) => el("tr", {}, [c.type, c.status, c.reason, c.time, c.message].map(
      (cell) => el("td", { textContent: cell })))));
  }

  function showEvents(events) {
    const body = document.querySelector("#events tbody");
    if (body) body.replaceChildren(...events.map((cells) => el("tr", {}, cells.map((cell) => el("td", { textContent: cell })))));
  }

  function showResults(pairs) {
    const list = document.getElementById("results");
    list.replaceChildren(...pairs.flatMap(([label, value]) => [el("dt", { textContent: label }), el("dd", { textContent: value })]));
    const none = document.getElementById("no-results");
    if (none) none.hidden = pairs.length > 0;
  }

  function showImages(images) {
    const box = document.getElementById("images");
    const present = new Set(Array.from(box.querySelectorAll("img")).map((img) => img.getAttribute("src")));
    const wanted = [];
    if (images.curves) wanted.push(["Curves", images.curves]);
    if (images.worst) wanted.push(["Worst test images", images.worst]);
    for (const url of images.overlays || []) wanted.push(["Overlay", url]);
    for (const [caption, url] of wanted) {
      if (present.has(url) || !url.startsWith("/files/")) continue;
      const img = el("img");
      img.setAttribute("src", url);
      img.setAttribute("alt", caption);
      box.append(el("figure", {}, [el("figcaption", { textContent: caption }), img]));
    }
    document.getElementById("no-images").hidden = wanted.length > 0 || document.getElementById("images-note") !== null;
  }

  // -- log -----------------------------------------------------------------------------------------
  const log = document.getElementById("log");
  const follow = document.getElementById("follow");
  function appendLog(lines) {
    log.append(document.createTextNode(lines.join("\n") + "\n"));
    while (log.childNodes.length > MAX_LOG_LINES) log.firstChild.remove();
    if (follow.checked) log.scrollTop = log.scrollHeight;
  }
  log.scrollTop = log.scrollHeight;

  const url = `/events/experiments/${encodeURIComponent(name)}?steps=${data.stepsOffset}&log=${data.logOffset}`;
  live(url, {
    detail: showDetail,
    steps: (points) => {
      for (const [step, loss, lr] of points) steps.set(step, [loss, lr]);
      columns = stepColumns();
      lossChart.setData([columns[0], columns[1]]);
      lrChart.setData([columns[0], columns[2]]);
    },
    log: appendLog,
    remove: () => text(document.getElementById("message"), "This experiment was deleted."),
  });
  lanex.bindCopyButtons();
  lanex.bindActions(name);
})();
