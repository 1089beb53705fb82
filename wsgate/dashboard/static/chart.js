// A hand-written SVG line chart: the last `capacity` samples of two series, scaled to the largest.
// The newest sample is at the right edge ("now"); the chart fills from the right as samples arrive.

export class RateChart {
  /** @param {SVGSVGElement} svg @param {number} [capacity=300] five minutes of one sample per second */
  constructor(svg, capacity = 300) {
    this.svg = svg;
    this.capacity = capacity;
    /** @type {number[]} */ this.in = [];
    /** @type {number[]} */ this.out = [];
  }

  /** @param {number} rateIn @param {number} rateOut */
  add(rateIn, rateOut) {
    this.in.push(rateIn);
    this.out.push(rateOut);
    if (this.in.length > this.capacity) { this.in.shift(); this.out.shift(); }
    this.draw();
  }

  draw() {
    const [width, height, bottom] = [600, 160, 18];  // the bottom strip holds the time axis
    const top = Math.max(1, ...this.in, ...this.out);
    const step = width / (this.capacity - 1);
    const line = (values) => values.map((value, i) => {
      const x = width - (values.length - 1 - i) * step;  // the newest at the right edge
      return `${x.toFixed(1)},${(height - bottom - value / top * (height - bottom - 20)).toFixed(1)}`;
    }).join(" ");
    this.svg.querySelector("#chart-in").setAttribute("points", line(this.in));
    this.svg.querySelector("#chart-out").setAttribute("points", line(this.out));
    this.svg.querySelector("#chart-max").textContent = `${Math.round(top)}/s`;
  }
}
