// The wallboard's fit: how big queue cards and agent cells may be so that all of them are on screen at
// once, and, when that would make them too small to read from across a room, how many pages to rotate.
//
// A pure function of the screen size and the counts (no DOM), so it can be reasoned about and tested:
// the page sets the sizes it returns as CSS variables and grid tracks, and everything inside a card or
// cell is sized in em of that card's unit. The design sizes below are the cards' content measured in
// those em (wall-fit.css lays them out); the legibility floors are fractions of the screen height, so
// they mean the same distance from a 720p TV as from a 4K one.

// A queue card is QUEUE_W_EM x QUEUE_H_EM of its unit; the waiting and longest-wait numerals are
// NUMERAL_EM of it (wall-fit.css .kpi-value).
export const QUEUE_W_EM = 26;
export const QUEUE_H_EM = 17;
export const NUMERAL_EM = 3.3;
// An agent cell (name and time; state and reason) and the legend row above the grid.
export const CELL_W_EM = 9;
export const CELL_H_EM = 2.7;
export const CELL_GAP_EM = 0.3;
export const CELL_W_ROOMY_EM = 13; // the widest a cell grows when there are rows to spare
export const LEGEND_H_EM = 1.9;

// Legibility floors, as fractions of the screen height. With up to 6 queues the numerals must be at
// least 6 % of the screen height (NUMERAL_EM x 0.0185 = 6.1 %); with more, 3.8 %, still readable
// across a room, rather than rotating 12 queues on every TV.
const QUEUE_U_FEW = 0.0185;
const QUEUE_U_MANY = 0.0115;
const FEW_QUEUES = 6;
const QUEUE_U_MAX = 0.06; // beyond this a single queue's card is only bigger, not better
const QUEUE_PX_MIN = 12; // a card's labels are 0.68 em: 8 px at this unit, the least that still reads
const QUEUE_SHARE = 0.66; // of the board, when queues and agents both rotate
const AGENT_U_PREF = 0.0175;
const AGENT_U_MIN = 0.013;
const AGENT_U_MAX = 0.028; // a few agents on a big wall: names about as big as a card's small numbers
const AGENT_PX_MIN = 11; // an 11 px name is the smallest a 720p screen shows crisply

/**
 * The best grid for n cards in w x h: the column count that gives the largest unit, preferring fewer
 * rows (no half-empty last row, more height left for the agents) when that costs under 5 % and keeps
 * the unit at or above `floor`. With agents below (`agentsBelow`), a grid that would leave a card's
 * place empty gives way to the fewest rows still at or above `floor` whatever the cost: 3 queues in
 * 2 x 2 on a 1080p kiosk wall were 7 % bigger than in one row, at the price of a hole beside them and
 * agent names cut to "Mallory ..." in the height they took.
 */
export function queueGrid(n, w, h, gap, floor = 0, agentsBelow = false) {
  const options = [];
  for (let cols = n; cols >= 1; cols -= 1) {
    const rows = Math.ceil(n / cols);
    const cw = (w - (cols - 1) * gap) / cols;
    const ch = (h - (rows - 1) * gap) / rows;
    options.push({ cols, rows, u: Math.max(0, Math.min(cw / QUEUE_W_EM, ch / QUEUE_H_EM)) });
  }
  const best = options.reduce((a, b) => (b.u > a.u ? b : a));
  const holes = best.cols * best.rows > n;
  const fewer = options.filter((o) => o.rows < best.rows && (o.u * 1.05 >= best.u || (agentsBelow && holes)) && o.u >= floor);
  return fewer.length ? fewer.reduce((a, b) => (b.rows < a.rows || (b.rows === a.rows && b.u > a.u) ? b : a)) : best;
}

/** The least height that shows n cards at unit u within width w (Infinity when not even one fits). */
function queueHeightAt(n, u, w, gap) {
  const maxCols = Math.floor((w + gap) / (QUEUE_W_EM * u + gap));
  if (maxCols < 1) return Infinity;
  const rows = Math.ceil(n / Math.min(n, maxCols));
  return rows * QUEUE_H_EM * u + (rows - 1) * gap;
}

function agentGeometry(au, w) {
  const cellW = CELL_W_EM * au;
  const rowGap = Math.max(2, Math.round(CELL_GAP_EM * au));
  const cols = Math.max(1, Math.floor((w + rowGap) / (cellW + rowGap)));
  return { cols, rowGap, cellH: Math.floor(CELL_H_EM * au), legendH: Math.ceil(LEGEND_H_EM * au) };
}

/** Height of the agents' region (legend, gap, grid) showing n slots at unit au, all at once. */
function agentsHeightAt(n, au, w, gap) {
  if (n === 0) return 0;
  const g = agentGeometry(au, w);
  const rows = Math.ceil(n / g.cols);
  return g.legendH + gap + rows * g.cellH + (rows - 1) * g.rowGap;
}

/**
 * The layout for a screen of width x height (CSS px) with `chromeH` taken by the header and banners,
 * `queues` cards and `slots` agent cells (team heads included).
 */
export function fitBoard({ width, height, chromeH = 0, queues: nq, slots: na }) {
  const pad = Math.round(Math.min(28, Math.max(6, height * 0.012)));
  const gap = pad;
  const boardW = Math.max(1, width - 2 * pad);
  const boardH = Math.max(1, Math.floor(height - chromeH - 2 * pad));
  const uTarget = Math.max(QUEUE_PX_MIN, height * (nq <= FEW_QUEUES ? QUEUE_U_FEW : QUEUE_U_MANY));
  const uMax = height * QUEUE_U_MAX;
  const auPref = Math.max(AGENT_PX_MIN + 1, height * AGENT_U_PREF);
  const auMin = Math.max(AGENT_PX_MIN, height * AGENT_U_MIN);

  let qRegion = 0;
  let au = auPref;
  let qPerPage = nq;
  let found = false;

  if (nq === 0) {
    found = true;
    au = auPref;
  } else if (na === 0) {
    qRegion = boardH;
    found = queueGrid(nq, boardW, qRegion, gap, uTarget).u >= uTarget;
  } else {
    // Shrink the agents (down to their floor) before the queues go below theirs.
    for (let a = auPref; a >= auMin - 1e-9; a -= 0.5) {
      const h = boardH - agentsHeightAt(na, a, boardW, gap) - gap;
      if (h > 0 && queueGrid(nq, boardW, h, gap, uTarget, true).u >= uTarget) {
        au = a;
        qRegion = h;
        found = true;
        break;
      }
    }
  }

  if (!found) {
    // Not everything fits legibly: queues at their floor, agents at theirs, rotating what is left over.
    au = auMin;
    const g = agentGeometry(auMin, boardW);
    const minAgentsH = na === 0 ? 0 : g.legendH + gap + Math.min(Math.ceil(na / g.cols), 2) * (g.cellH + g.rowGap);
    // Queues may take up to QUEUE_SHARE of the board here: both halves rotate rather than one starving.
    const share = na === 0
      ? boardH
      : Math.max(Math.min(boardH - minAgentsH - gap, boardH * QUEUE_SHARE), boardH - agentsHeightAt(na, auMin, boardW, gap) - gap);
    const room = Math.max(QUEUE_H_EM * uTarget, share);
    const need = queueHeightAt(nq, uTarget, boardW, gap);
    if (need <= room) {
      qRegion = Math.floor(need);
    } else {
      const maxCols = Math.max(1, Math.floor((boardW + gap) / (QUEUE_W_EM * uTarget + gap)));
      const maxRows = Math.max(1, Math.floor((room + gap) / (QUEUE_H_EM * uTarget + gap)));
      qPerPage = Math.max(1, Math.min(nq, maxCols * maxRows));
      qRegion = Math.floor(Math.min(room, boardH));
    }
  }

  // Queues: the grid for one page's cards, the unit capped, the region shrunk to what the cards use.
  let queues = { u: 0, cols: 1, rows: 0, cellH: 0, regionH: 0, perPage: Math.max(1, qPerPage), pages: 1 };
  if (nq > 0) {
    const grid = queueGrid(qPerPage, boardW, qRegion, gap, uTarget, na > 0);
    // A card taller than its content (a width-bound unit) would only spread its rows apart: the
    // height it does not use goes to the agents below. Whole pixels, and the unit from the cell, so
    // that rounding never makes a card's content taller than its cell.
    const rowRoom = Math.floor((qRegion - (grid.rows - 1) * gap) / grid.rows);
    const cellH = Math.min(Math.floor(QUEUE_H_EM * Math.min(grid.u, uMax) * 1.1), rowRoom);
    const u = Math.min(grid.u, uMax, cellH / QUEUE_H_EM);
    queues = {
      u: Math.floor(u * 100) / 100,
      cols: grid.cols,
      rows: grid.rows,
      cellH,
      regionH: grid.rows * cellH + (grid.rows - 1) * gap,
      perPage: qPerPage,
      pages: Math.ceil(nq / qPerPage),
    };
  }

  // Agents: whatever height is left (bigger cells when all of them fit bigger); pages for the rest.
  const left = boardH - (nq > 0 ? queues.regionH + gap : 0);
  if (na > 0 && agentsHeightAt(na, au, boardW, gap) <= left) {
    for (let a = Math.max(au, height * AGENT_U_MAX); a > au; a -= 0.5) {
      if (agentsHeightAt(na, a, boardW, gap) <= left) {
        au = a;
        break;
      }
    }
  }
  const ag = agentGeometry(au, boardW);
  const gridRoom = Math.max(ag.cellH, left - ag.legendH - gap);
  const rowsFit = Math.max(1, Math.floor((gridRoom + ag.rowGap) / (ag.cellH + ag.rowGap)));
  // Height to spare under a short grid: fewer, wider cells (up to CELL_W_ROOMY_EM), so that names such as
  // "Mallory Chen" are not cut beside their time when the rows below would stay empty anyway.
  while (na > 0 && ag.cols > 1 && Math.ceil(na / (ag.cols - 1)) <= rowsFit
         && (boardW + ag.rowGap) / (ag.cols - 1) - ag.rowGap <= CELL_W_ROOMY_EM * au) {
    ag.cols -= 1;
  }
  const rowsUsed = na === 0 ? 0 : Math.min(rowsFit, Math.ceil(na / ag.cols));
  const perPage = Math.max(1, ag.cols * rowsFit);
  const agents = {
    u: Math.floor(au * 100) / 100,
    cols: ag.cols,
    rows: rowsUsed,
    cellH: ag.cellH,
    rowGap: ag.rowGap,
    legendH: ag.legendH,
    gridH: rowsUsed * ag.cellH + Math.max(0, rowsUsed - 1) * ag.rowGap,
    perPage,
    pages: Math.max(1, Math.ceil(na / perPage)),
  };
  return { pad, gap, boardW, boardH, queues, agents };
}
