// Compare: the runs' validation accuracy per epoch and training loss per step, overlaid.
"use strict";

(() => {
  const { data, chart, text } = lanex;
  text(document.getElementById("live"), "not live");  // a comparison is drawn once, when the page loads
  if (!data) return;
  const names = data.names;

  function overlay(xsOf) {
    const xs = Array.from(new Set(names.flatMap((n) => xsOf(n).map(([x]) => x)))).sort((a, b) => a - b);
    return [xs, ...names.map((n) => {
      const byX = new Map(xsOf(n));
      return xs.map((x) => (byX.has(x) ? byX.get(x) : null));
    })];
  }
  const series = names.map((n) => ({ label: n }));
  chart(document.getElementById("chart-val"), "epoch", series,
        overlay((n) => (data.validation[n] || []).map((h) => [h.epoch, h.accuracy])));
  chart(document.getElementById("chart-loss"), "step", series,
        overlay((n) => (data.steps[n] || []).map(([step, loss]) => [step, loss])));
})();
