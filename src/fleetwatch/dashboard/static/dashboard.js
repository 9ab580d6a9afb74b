// Draws each figure whose JSON the page carries, and makes the heatmap and markers clickable.
"use strict";
(function () {
  const config = { responsive: true, displaylogo: false };
  const params = new URLSearchParams(window.location.search);
  document.querySelectorAll('script[type="application/json"][data-plot]').forEach((holder) => {
    const target = document.getElementById(holder.dataset.plot);
    const figure = JSON.parse(holder.textContent);
    Plotly.newPlot(target, figure.data, figure.layout, config).then((plot) => {
      if (target.id === "heatmap") {
        plot.on("plotly_click", (event) => {
          const point = event.points[0];
          window.location.href = "/device/" + encodeURIComponent(point.y) +
            "?around=" + encodeURIComponent(point.customdata || point.x);
        });
      } else if (target.id === "sensors") {
        plot.on("plotly_click", (event) => {
          const point = event.points[0];
          if (point.data.mode !== "markers") return;
          const next = new URLSearchParams(params);
          next.set("anomaly", point.x);
          if (!next.has("since")) next.delete("around");
          window.location.search = next.toString();
        });
      }
      target.dataset.ready = "1";
    });
  });
})();
