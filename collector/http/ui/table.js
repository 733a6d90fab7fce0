// A virtualized table: whatever the number of rows, the DOM holds only the visible rows and a
// small overscan, at a fixed row height, inside a spacer as tall as all rows. The rows are a
// plain array of ids given by the owner (already filtered and sorted) and a `get(id)` that
// gives a row's fields; `refresh(ids)` repaints the visible rows among `ids`, writing a cell
// only when its text changed. One listener per table (delegation), none per row.
//
// Keyboard: the table is one tab stop (a grid with aria-activedescendant); arrow keys,
// PageUp/PageDown, Home/End move the focused row, Enter opens it (`onOpen(id)`). A column
// header is a button that asks the owner to sort (`onSort(key)`).

import { setBadge } from "./format.js";

const OVERSCAN = 6;
let tables = 0;

export class VirtualTable {
  /**
   * columns: [{ key, label, width ("8rem", "2fr"), text(row, id) | badge(row, id), align,
   * sortable }]; rowHeight in px; onOpen(id), onSort(key); label for screen readers.
   */
  constructor(host, { columns, rowHeight = 32, onOpen, onSort, label, empty = "Nothing to show" }) {
    this.columns = columns;
    this.rowHeight = rowHeight;
    this.onOpen = onOpen;
    this.onSort = onSort;
    this.ids = [];
    this.get = () => undefined;
    this.focused = -1;
    this.first = 0;
    this.pool = [];
    this.sortKey = null;
    this.sortDesc = false;
    this.frame = 0;
    this.uid = `vt${++tables}`;

    const root = document.createElement("div");
    root.className = "vtable";
    root.style.setProperty("--cols", columns.map((c) => c.width || "1fr").join(" "));
    root.style.setProperty("--row", `${rowHeight}px`);

    const head = document.createElement("div");
    head.className = "vhead";
    head.setAttribute("role", "row");
    for (const column of columns) {
      const cell = document.createElement("div");
      cell.setAttribute("role", "columnheader");
      cell.className = column.align === "right" ? "num" : "";
      if (column.sortable !== false && onSort) {
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.sort = column.key;
        button.textContent = column.label;
        cell.append(button);
      } else {
        cell.textContent = column.label;
      }
      column.header = cell;
      head.append(cell);
    }

    const viewport = document.createElement("div");
    viewport.className = "vbody";
    viewport.tabIndex = 0;
    viewport.setAttribute("role", "grid");
    viewport.setAttribute("aria-label", label || "table");
    viewport.setAttribute("aria-readonly", "true");
    viewport.dataset.overscan = String(OVERSCAN); // rows drawn beyond each edge of the view
    head.id = `${this.uid}-head`;
    viewport.setAttribute("aria-owns", head.id); // the header row belongs to the grid
    const spacer = document.createElement("div");
    spacer.className = "vspacer";
    spacer.setAttribute("role", "presentation");
    viewport.append(spacer);

    this.emptyNote = document.createElement("p");
    this.emptyNote.className = "vempty";
    this.emptyNote.textContent = empty;
    this.emptyNote.hidden = true;

    root.append(head, viewport, this.emptyNote);
    host.append(root);
    this.root = root;
    this.viewport = viewport;
    this.spacer = spacer;
    this.height = viewport.clientHeight || 400;

    head.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-sort]");
      if (button) this.onSort?.(button.dataset.sort);
    });
    viewport.addEventListener("scroll", () => this.request(), { passive: true });
    viewport.addEventListener("keydown", (event) => this.key(event));
    viewport.addEventListener("click", (event) => {
      const row = event.target.closest(".vrow");
      if (!row) return;
      const index = Number(row.dataset.index);
      this.focus(index, false);
      if (!event.target.closest("a")) this.onOpen?.(this.ids[index]);
    });
    viewport.addEventListener("focus", () => {
      if (this.focused < 0 && this.ids.length) this.focus(0, true);
    });
    this.resize = new ResizeObserver(() => {
      this.height = viewport.clientHeight;
      head.style.paddingRight = `${viewport.offsetWidth - viewport.clientWidth}px`;
      this.request();
    });
    this.resize.observe(viewport);
  }

  destroy() {
    this.resize.disconnect();
    cancelAnimationFrame(this.frame);
    this.root.remove();
  }

  /** Show how the rows are sorted (the owner sorts). */
  setSort(key, desc) {
    this.sortKey = key;
    this.sortDesc = desc;
    for (const column of this.columns) {
      if (column.key === key) column.header.setAttribute("aria-sort", desc ? "descending" : "ascending");
      else column.header.removeAttribute("aria-sort");
    }
  }

  /** The rows, in order: every visible row is repainted. Keeps the focused row's id. */
  setRows(ids, get) {
    const focusedId = this.focused >= 0 ? this.ids[this.focused] : undefined;
    this.ids = ids;
    this.get = get;
    if (focusedId !== undefined) {
      const index = ids.indexOf(focusedId);
      this.focused = index >= 0 ? index : Math.min(this.focused, ids.length - 1);
    }
    this.spacer.style.height = `${ids.length * this.rowHeight}px`;
    this.viewport.setAttribute("aria-rowcount", String(ids.length));
    this.emptyNote.hidden = ids.length > 0;
    this.render(true);
  }

  /** Repaint the visible rows whose id is in `changed` (a Set). */
  refresh(changed) {
    for (const row of this.pool) {
      if (!row.hidden && changed.has(row.dataset.id)) this.paint(row, Number(row.dataset.index), true);
    }
  }

  request() {
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.render(false);
      });
    }
  }

  /** Place the pool of rows over the visible part; repaint them all when `all`. */
  render(all) {
    const top = this.viewport.scrollTop;
    const first = Math.max(0, Math.floor(top / this.rowHeight) - OVERSCAN);
    const wanted = Math.ceil(this.height / this.rowHeight) + 2 * OVERSCAN;
    const count = Math.max(0, Math.min(wanted, this.ids.length - first));
    while (this.pool.length < count) this.pool.push(this.makeRow());
    for (let i = 0; i < this.pool.length; i++) {
      const row = this.pool[i];
      if (i >= count) {
        if (!row.hidden) {
          row.hidden = true;
          row.dataset.id = "";
        }
        continue;
      }
      const index = first + i;
      const moved = Number(row.dataset.index) !== index || row.hidden;
      row.hidden = false;
      if (moved || all) this.paint(row, index, moved);
    }
    this.first = first;
    this.markFocus();
  }

  makeRow() {
    const row = document.createElement("div");
    row.className = "vrow";
    row.setAttribute("role", "row");
    row.id = `${this.uid}-r${this.pool.length}`;
    for (const column of this.columns) {
      const cell = document.createElement("div");
      cell.setAttribute("role", "gridcell");
      if (column.align === "right") cell.className = "num";
      if (column.badge) cell.append(document.createElement("span"));
      if (column.link) {
        const link = document.createElement("a");
        link.tabIndex = -1;
        cell.append(link);
      }
      row.append(cell);
    }
    row.dataset.index = "-1";
    this.viewport.append(row);
    return row;
  }

  paint(row, index, moved) {
    const id = this.ids[index];
    const data = this.get(id);
    if (moved) {
      row.dataset.index = String(index);
      row.dataset.id = id;
      row.style.transform = `translateY(${index * this.rowHeight}px)`;
      row.setAttribute("aria-rowindex", String(index + 1));
    }
    if (!data) return;
    const cells = row.children;
    for (let c = 0; c < this.columns.length; c++) {
      const column = this.columns[c];
      const cell = cells[c];
      if (column.badge) {
        setBadge(cell.firstChild, column.badge(data, id));
      } else if (column.link) {
        const link = cell.firstChild;
        const text = column.text(data, id);
        if (link.textContent !== text) link.textContent = text;
        const href = column.link(data, id);
        if (link.getAttribute("href") !== href) link.setAttribute("href", href);
      } else {
        const text = column.text(data, id);
        if (cell.textContent !== text) cell.textContent = text;
      }
    }
  }

  markFocus() {
    for (const row of this.pool) {
      const on = !row.hidden && Number(row.dataset.index) === this.focused;
      if (row.classList.contains("focused") !== on) {
        row.classList.toggle("focused", on);
        row.setAttribute("aria-selected", String(on));
      }
      if (on) this.viewport.setAttribute("aria-activedescendant", row.id);
    }
    if (this.focused < 0) this.viewport.removeAttribute("aria-activedescendant");
  }

  /** Focus row `index`, scrolling it into view when `scroll`. */
  focus(index, scroll) {
    if (!this.ids.length) return;
    this.focused = Math.max(0, Math.min(index, this.ids.length - 1));
    if (scroll) {
      const top = this.focused * this.rowHeight;
      const view = this.viewport;
      if (top < view.scrollTop) view.scrollTop = top;
      else if (top + this.rowHeight > view.scrollTop + this.height) {
        view.scrollTop = top + this.rowHeight - this.height;
      }
    }
    this.render(false);
  }

  focusedId() {
    return this.focused >= 0 ? this.ids[this.focused] : undefined;
  }

  key(event) {
    const page = Math.max(1, Math.floor(this.height / this.rowHeight) - 1);
    const moves = {
      ArrowDown: 1,
      ArrowUp: -1,
      PageDown: page,
      PageUp: -page,
      Home: -Infinity,
      End: Infinity,
    };
    if (event.key in moves) {
      event.preventDefault();
      const step = moves[event.key];
      const from = this.focused < 0 ? 0 : this.focused;
      const to = step === Infinity ? this.ids.length - 1 : step === -Infinity ? 0 : from + step;
      this.focus(to, true);
    } else if (event.key === "Enter" && this.focused >= 0) {
      event.preventDefault();
      this.onOpen?.(this.ids[this.focused]);
    }
  }
}
