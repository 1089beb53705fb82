// A hand-written SVG line chart: the last `capacity` samples of two series, scaled to the largest.

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
    const [width, height] = [600, 160];
    const top = Math.max(1, ...this.in, ...this.out);
    const line = (values) => values.map((value, i) =>
      `${(i * width / (this.capacity - 1)).toFixed(1)},${(height - 4 - value / top * (height - 24)).toFixed(1)}`).join(" ");
    this.svg.querySelector("#chart-in").setAttribute("points", line(this.in));
    this.svg.querySelector("#chart-out").setAttribute("points", line(this.out));
    this.svg.querySelector("#chart-max").textContent = `${Math.round(top)}/s`;
  }
}
