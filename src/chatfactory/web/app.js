/* chatfactory chat page: plain JavaScript over the server's HTTP API, no build step.
 *
 * Safety rule: text from people or models reaches the DOM only as text nodes (textContent), or,
 * for answers, as Markdown rendered by marked with every raw-HTML token escaped and then passed
 * through DOMPurify (no img/style/form/svg, no event handlers, no javascript: links). The page's
 * Content-Security-Policy (server/routes/web.py) forbids inline script as a second wall.
 *
 * API used: /v1/me, /v1/models, /v1/conversations (list, create, read, rename, delete, messages),
 * /v1/conversations/{id}/regenerate|edit|feedback, /v1/messages/{id}/feedback, /v1/compare,
 * /v1/rankings. Streams are OpenAI chat-completion chunks over SSE.
 */
"use strict";

(() => {
  const KEY_STORAGE = "chatfactory.apiKey";
  const MODEL_STORAGE = "chatfactory.model";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  const state = {
    me: null,
    models: [],
    convs: [],          // this user's conversations, newest first
    current: null,      // the open conversation (with messages), or null for a new chat
    feedback: new Map(), // message id -> {rating, comment}
    altShown: new Map(), // position -> choice_index shown (regenerated alternatives)
    streaming: null,    // AbortController of the generation in flight
    compare: null,      // the compare run on screen
  };

  // ------------------------------------------------------------------ icons (constant paths only)
  const ICONS = {
    plus: ["M12 5v14", "M5 12h14"],
    search: ["M18 11a7 7 0 1 1-14 0a7 7 0 0 1 14 0z", "M21 21l-4.3-4.3"],
    close: ["M6 6l12 12", "M18 6L6 18"],
    menu: ["M4 7h16", "M4 12h16", "M4 17h16"],
    edit: ["M12 20h9", "M16.5 3.5a2.1 2.1 0 0 1 3 3L7 19l-4 1 1-4z"],
    pencil: ["M16.5 3.5a2.1 2.1 0 0 1 3 3L7 19l-4 1 1-4z"],
    "arrow-up": ["M12 19V5", "M5 12l7-7 7 7"],
    stop: { fill: ["M7 7h10v10H7z"] },
    copy: ["M9 9h11v11H9z", "M5 15H4V4h11v1"],
    check: ["M5 12l5 5L20 7"],
    "thumbs-up": ["M7 10v11", "M7 10l4-7a2.5 2.5 0 0 1 3 3l-1 4h6a2 2 0 0 1 2 2.3l-1.4 7A2 2 0 0 1 17.6 21H7", "M3 10h4v11H3z"],
    "thumbs-down": ["M17 14V3", "M17 14l-4 7a2.5 2.5 0 0 1-3-3l1-4H5a2 2 0 0 1-2-2.3l1.4-7A2 2 0 0 1 6.4 3H17", "M21 3h-4v11h4z"],
    refresh: ["M20 12a8 8 0 1 1-2.3-5.7L20 8.5", "M20 3.5v5h-5"],
    trash: ["M4 7h16", "M9 7V4h6v3", "M6 7l1 13h10l1-13"],
    compare: ["M4 4h6v16H4z", "M14 4h6v16h-6z"],
    "chevron-left": ["M15 6l-6 6 6 6"],
    "chevron-right": ["M9 6l6 6-6 6"],
    alert: ["M12 3l10 18H2z", "M12 10v4", "M12 17.5v.01"],
  };

  function icon(name) {
    const spec = ICONS[name];
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("class", "icon");
    svg.setAttribute("aria-hidden", "true");
    const strokes = Array.isArray(spec) ? spec : spec.stroke || [];
    const fills = Array.isArray(spec) ? [] : spec.fill || [];
    for (const d of strokes) {
      const p = document.createElementNS(SVG_NS, "path");
      p.setAttribute("d", d);
      p.setAttribute("fill", "none");
      p.setAttribute("stroke", "currentColor");
      p.setAttribute("stroke-width", "1.8");
      p.setAttribute("stroke-linecap", "round");
      p.setAttribute("stroke-linejoin", "round");
      svg.appendChild(p);
    }
    for (const d of fills) {
      const p = document.createElementNS(SVG_NS, "path");
      p.setAttribute("d", d);
      p.setAttribute("fill", "currentColor");
      svg.appendChild(p);
    }
    return svg;
  }

  /** el("button", {class: "x", onclick: f, "aria-label": "y"}, child, "text", ...) */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function iconButton(name, label, onclick, extra = {}) {
    return el("button", { type: "button", class: "icon-btn", "aria-label": label, title: label, onclick, ...extra }, icon(name));
  }

  // ------------------------------------------------------------------ markdown, safely
  const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const PURIFY = {
    FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "iframe", "svg", "math", "video", "audio"],
    FORBID_ATTR: ["style", "srcset"],
    ALLOW_DATA_ATTR: false,
  };

  function configureMarkdown() {
    // Raw HTML in model output is shown as the text it is, never interpreted.
    window.marked.use({
      gfm: true,
      breaks: true,
      renderer: { html: (token) => (token.block ? `<p>${escapeHtml(token.text)}</p>` : escapeHtml(token.text)) },
    });
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
  }

  function renderMarkdown(target, text) {
    const html = window.DOMPurify.sanitize(window.marked.parse(text), PURIFY);
    target.innerHTML = html; // sanitised above; see the safety rule at the top of this file
    for (const pre of target.querySelectorAll("pre")) decorateCode(pre);
  }

  function decorateCode(pre) {
    const code = pre.querySelector("code");
    const lang = ((code && code.className.match(/language-([\w+#.-]+)/)) || [])[1] || "text";
    const copy = el("button", { type: "button", class: "link-btn copy-code", "aria-label": "Copy code" }, icon("copy"), "Copy");
    copy.addEventListener("click", () => copyText((code || pre).textContent, copy));
    const block = el("div", { class: "code-block" }, el("div", { class: "code-head" }, el("span", { text: lang }), copy));
    pre.replaceWith(block);
    block.append(pre);
  }

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const area = el("textarea", { class: "sr-only" });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    if (button) {
      const old = [...button.childNodes];
      button.replaceChildren(icon("check"), button.classList.contains("icon-btn") ? "" : "Copied");
      setTimeout(() => button.replaceChildren(...old), 1200);
    }
  }

  // ------------------------------------------------------------------ HTTP
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, { method = "GET", body, signal, raw = false } = {}) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const key = localStorage.getItem(KEY_STORAGE);
    if (key) headers.Authorization = `Bearer ${key}`;
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "Cannot reach the server. Check that it is running.");
    }
    if (!res.ok) {
      let message = `${res.status} ${res.statusText}`;
      try {
        message = (await res.json()).error.message || message;
      } catch { /* not JSON */ }
      if (res.status === 401) showSignin(localStorage.getItem(KEY_STORAGE) ? "That API key was not accepted." : "");
      throw new ApiError(res.status, message);
    }
    return raw ? res : res.json();
  }

  /** Parsed `data:` payloads of a server-sent-event response, until [DONE]. */
  async function* sseEvents(res) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event.error) throw new ApiError(500, event.error.message);
        yield event;
      }
    }
  }

  /** POST `body` to a streaming endpoint; calls onDelta(choiceIndex, text) and onChunk(chunk). */
  async function stream(path, body, { onDelta, onChunk } = {}) {
    const controller = new AbortController();
    setStreaming(controller);
    try {
      const res = await api(path, { method: "POST", body: { ...body, stream: true }, signal: controller.signal, raw: true });
      for await (const chunk of sseEvents(res)) {
        if (onChunk) onChunk(chunk);
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content && onDelta) onDelta(choice.index, choice.delta.content);
        }
      }
      return { stopped: false };
    } catch (e) {
      if (e.name === "AbortError") return { stopped: true };
      throw e;
    } finally {
      setStreaming(null);
    }
  }

  function setStreaming(controller) {
    state.streaming = controller;
    const busy = Boolean(controller);
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    $("compare-run").hidden = busy;
    $("compare-stop").hidden = !busy;
    updateSendButton();
  }

  function stopGeneration() {
    if (state.streaming) state.streaming.abort();
  }

  // ------------------------------------------------------------------ toasts
  let toastTimer = null;
  function toast(message) {
    const t = $("toast");
    t.textContent = message;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 2600);
  }

  // ------------------------------------------------------------------ sign-in
  function showSignin(error = "") {
    $("app").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = error;
    $("signin-error").hidden = !error;
    $("signin-key").focus();
  }

  async function onSignin(event) {
    event.preventDefault();
    const key = $("signin-key").value.trim();
    if (!key) return;
    localStorage.setItem(KEY_STORAGE, key);
    try {
      await start();
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) showSignin(e.message);
    }
  }

  function signOut() {
    localStorage.removeItem(KEY_STORAGE);
    location.hash = "";
    location.reload();
  }

  // ------------------------------------------------------------------ models
  async function loadModels() {
    const list = await api("/v1/models");
    state.models = list.data.map((m) => m.id);
    const select = $("model");
    select.replaceChildren(...state.models.map((id) => el("option", { value: id, text: id })));
    const saved = localStorage.getItem(MODEL_STORAGE);
    if (saved && state.models.includes(saved)) select.value = saved;
  }

  const selectedModel = () => $("model").value || state.models[0];

  // ------------------------------------------------------------------ conversation list
  async function loadConversations() {
    const all = [];
    let after = null;
    for (let page = 0; page < 20; page++) {
      const q = new URLSearchParams({ source: "conversation", limit: "100" });
      if (after) q.set("after", after);
      const res = await api(`/v1/conversations?${q}`);
      all.push(...res.data);
      if (!res.has_more) break;
      after = res.last_id;
    }
    state.convs = all;
    renderConversationList();
  }

  function renderConversationList() {
    const query = $("search").value.trim().toLowerCase();
    const shown = state.convs.filter((c) => !query || (c.title || "New chat").toLowerCase().includes(query));
    const currentId = state.current && state.current.id;
    $("conv-list").replaceChildren(
      ...shown.map((c) => {
        const li = el("li", { class: `conv-item${c.id === currentId ? " active" : ""}`, "data-id": c.id });
        const link = el("button", { type: "button", class: "conv-link", title: c.title || "New chat", text: c.title || "New chat" });
        link.addEventListener("click", () => { location.hash = `#/c/${c.id}`; closeSidebar(); });
        const actions = el("div", { class: "conv-actions" },
          iconButton("pencil", "Rename chat", () => startRename(li, c)),
          iconButton("trash", "Delete chat", () => deleteConversation(c)));
        li.append(link, actions);
        if (c.id === currentId) link.setAttribute("aria-current", "page");
        return li;
      }),
    );
    $("conv-empty").hidden = shown.length > 0;
    $("conv-empty").textContent = query ? "No chats match your search." : "No chats yet.";
  }

  function startRename(li, conv) {
    const input = el("input", { class: "conv-rename", "aria-label": "Chat title", maxlength: "300" });
    input.value = conv.title || "";
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== conv.title) {
        try {
          const updated = await api(`/v1/conversations/${conv.id}`, { method: "PATCH", body: { title } });
          conv.title = updated.title;
          if (state.current && state.current.id === conv.id) state.current.title = updated.title;
          updateTitle();
        } catch (e) {
          toast(e.message);
        }
      }
      renderConversationList();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); finish(true); }
      if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
    li.replaceChildren(input);
    input.focus();
    input.select();
  }

  async function deleteConversation(conv) {
    if (!window.confirm(`Delete “${conv.title || "New chat"}”? This cannot be undone.`)) return;
    try {
      await api(`/v1/conversations/${conv.id}`, { method: "DELETE" });
    } catch (e) {
      if (e.status !== 404) return toast(e.message);
    }
    state.convs = state.convs.filter((c) => c.id !== conv.id);
    if (state.current && state.current.id === conv.id) location.hash = "";
    renderConversationList();
    toast("Chat deleted");
  }

  function touchConversation(conv) {
    // move to the top of the list (most recently updated), adding it if new
    state.convs = [conv, ...state.convs.filter((c) => c.id !== conv.id)];
    renderConversationList();
  }

  // ------------------------------------------------------------------ routing
  async function route() {
    stopGeneration();
    const hash = location.hash;
    const match = hash.match(/^#\/c\/([\w-]+)$/);
    if (hash === "#/compare") return showCompare();
    showChat();
    if (match) return openConversation(match[1]);
    state.current = null;
    state.altShown.clear();
    renderMessages();
    updateTitle();
    renderConversationList();
    $("input").focus();
  }

  function showChat() {
    $("chat-view").hidden = false;
    $("compare-view").hidden = true;
    $("open-compare").classList.remove("active");
    $("open-compare").removeAttribute("aria-current");
  }

  function showCompare() {
    $("chat-view").hidden = true;
    $("compare-view").hidden = false;
    $("open-compare").classList.add("active");
    $("open-compare").setAttribute("aria-current", "page");
    state.current = null;
    $("view-title").textContent = "Compare answers";
    renderConversationList();
    $("compare-prompt").focus();
  }

  async function openConversation(id) {
    try {
      const [conv, fb] = await Promise.all([
        api(`/v1/conversations/${id}`),
        api(`/v1/conversations/${id}/feedback`),
      ]);
      if (state.current && state.current.id !== id) state.altShown.clear();
      state.current = conv;
      state.feedback = new Map(fb.data.map((f) => [f.message_id, f]));
      if (conv.model && state.models.includes(conv.model)) $("model").value = conv.model;
    } catch (e) {
      if (e.status === 404) {
        toast("That chat no longer exists");
        location.hash = "";
        return;
      }
      throw e;
    }
    renderMessages();
    updateTitle();
    renderConversationList();
    scrollToBottom(true);
  }

  /** Re-read the open conversation (ids, template flags, stored text). After a Stop, the server
   * stores the partial answer when it notices the disconnect: wait for it briefly. */
  async function reloadCurrent({ expectAnswer = false } = {}) {
    if (!state.current) return;
    const id = state.current.id;
    for (let attempt = 0; attempt < 15; attempt++) {
      const conv = await api(`/v1/conversations/${id}`);
      const last = conv.messages[conv.messages.length - 1];
      if (!expectAnswer || (last && last.role === "assistant") || attempt === 14) {
        if (!state.current || state.current.id !== id) return;
        state.current = conv;
        break;
      }
      await new Promise((r) => setTimeout(r, 150));
    }
    renderMessages();
    updateTitle();
    const summary = state.convs.find((c) => c.id === id);
    touchConversation({ ...(summary || {}), id, title: state.current.title, model: state.current.model });
  }

  function updateTitle() {
    $("view-title").textContent = state.current ? state.current.title || "New chat" : "";
    document.title = state.current && state.current.title ? `${state.current.title} · chatfactory` : "chatfactory";
  }

  // ------------------------------------------------------------------ messages
  const TEMPLATE_NOTICE = {
    input: "Your message was flagged by content moderation, so it was not sent to the model. This is a standard reply.",
    output: "The model's answer was flagged by content moderation and replaced by this standard reply.",
  };

  /** positions -> [messages by choice_index]: the newest answer is choice 0, older ones follow. */
  function groupByPosition(messages) {
    const groups = new Map();
    for (const m of messages) {
      if (!groups.has(m.position)) groups.set(m.position, []);
      groups.get(m.position).push(m);
    }
    for (const g of groups.values()) g.sort((a, b) => a.choice_index - b.choice_index);
    return [...groups.entries()].sort((a, b) => a[0] - b[0]);
  }

  function renderMessages() {
    const box = $("messages");
    const messages = state.current ? state.current.messages.filter((m) => m.role !== "system") : [];
    $("welcome").hidden = messages.length > 0 || Boolean(state.streaming);
    const groups = groupByPosition(messages);
    const lastPosition = groups.length ? groups[groups.length - 1][0] : -1;
    box.replaceChildren(
      ...groups.map(([position, choices]) => {
        const shownIndex = Math.min(state.altShown.get(position) || 0, choices.length - 1);
        const m = choices[shownIndex];
        if (m.role === "user") return userMessage(m);
        return assistantMessage(m, { position, choices, shownIndex, isLast: position === lastPosition });
      }),
    );
  }

  function userMessage(m) {
    const bubble = el("div", { class: "bubble", text: m.content });
    const actions = el("div", { class: "msg-actions" },
      iconButton("copy", "Copy message", (e) => copyText(m.content, e.currentTarget)),
      iconButton("pencil", "Edit message", () => startEdit(node, m)));
    const node = el("div", { class: "msg msg-user", "data-id": m.id, "data-role": "user" }, el("div", { class: "msg-body" }, bubble, actions));
    return node;
  }

  function assistantShell() {
    const body = el("div", { class: "msg-body" });
    const node = el("div", { class: "msg msg-assistant", "data-role": "assistant" },
      el("div", { class: "bot-avatar", "aria-hidden": "true" }, el("span", { class: "logo" })), body);
    return { node, body };
  }

  function assistantMessage(m, { position, choices, shownIndex, isLast }) {
    const { node, body } = assistantShell();
    node.dataset.id = m.id;
    if (m.template_used) {
      node.dataset.template = m.template_used;
      body.append(el("div", { class: "notice", role: "note" }, icon("alert"), el("span", { text: TEMPLATE_NOTICE[m.template_used] || TEMPLATE_NOTICE.output })));
    }
    const content = el("div", { class: "md" });
    renderMarkdown(content, m.content);
    body.append(content);
    if (m.finish_reason === "cancelled") body.append(el("div", { class: "stopped", text: m.content ? "Stopped" : "Stopped before the model wrote anything" }));
    else if (m.finish_reason === "length") body.append(el("div", { class: "stopped", text: "Reached the length limit" }));
    else if (m.finish_reason === "content_filter" && !m.template_used) body.append(el("div", { class: "stopped", text: "Cut short by content moderation" }));
    body.append(messageActions(m, { position, choices, shownIndex, isLast }));
    return node;
  }

  function messageActions(m, { position, choices, shownIndex, isLast }) {
    const fb = state.feedback.get(m.id);
    const actions = el("div", { class: "msg-actions" });
    if (choices.length > 1) {
      const n = choices.length;
      const nav = el("span", { class: "alt-nav" },
        iconButton("chevron-left", "Previous answer", () => { state.altShown.set(position, shownIndex + 1); renderMessages(); }, { disabled: shownIndex >= n - 1 }),
        el("span", { text: `${n - shownIndex} / ${n}` }),
        iconButton("chevron-right", "Next answer", () => { state.altShown.set(position, shownIndex - 1); renderMessages(); }, { disabled: shownIndex <= 0 }));
      actions.append(nav);
    }
    actions.append(iconButton("copy", "Copy answer", (e) => copyText(m.content, e.currentTarget)));
    const up = iconButton("thumbs-up", "Good answer", () => rate(m, 1, node()), { "aria-pressed": String(fb ? fb.rating === 1 : false), class: `icon-btn thumb-up${fb && fb.rating === 1 ? " on" : ""}` });
    const down = iconButton("thumbs-down", "Bad answer", () => rate(m, -1, node()), { "aria-pressed": String(fb ? fb.rating === -1 : false), class: `icon-btn thumb-down${fb && fb.rating === -1 ? " on" : ""}` });
    actions.append(up, down);
    if (isLast) actions.append(iconButton("refresh", "Regenerate", () => regenerate(), { class: "icon-btn regenerate" }));
    if (m.model) actions.append(el("span", { class: "meta muted", text: m.model }));
    const node = () => actions.closest(".msg");
    return actions;
  }

  // ------------------------------------------------------------------ feedback
  async function rate(m, rating, node) {
    const current = state.feedback.get(m.id);
    try {
      if (current && current.rating === rating) {
        await api(`/v1/messages/${m.id}/feedback`, { method: "DELETE" });
        state.feedback.delete(m.id);
      } else {
        const saved = await api(`/v1/messages/${m.id}/feedback`, { method: "PUT", body: { rating, comment: current ? current.comment : null } });
        state.feedback.set(m.id, saved);
      }
    } catch (e) {
      return toast(e.message);
    }
    renderMessages();
    const fresh = $("messages").querySelector(`.msg[data-id="${CSS.escape(m.id)}"]`);
    if (state.feedback.has(m.id) && fresh) openCommentBox(fresh, m);
    else if (node) toast("Feedback removed");
  }

  function openCommentBox(node, m) {
    const fb = state.feedback.get(m.id);
    const area = el("textarea", { class: "text-input feedback-comment", rows: "2", maxlength: "5000",
      placeholder: fb.rating > 0 ? "What was good about this answer? (optional)" : "What was wrong with this answer? (optional)",
      "aria-label": "Feedback comment" });
    area.value = fb.comment || "";
    const save = el("button", { type: "button", class: "btn btn-primary", text: "Send" });
    const box = el("div", { class: "feedback-box" }, area, save);
    save.addEventListener("click", async () => {
      try {
        const saved = await api(`/v1/messages/${m.id}/feedback`, { method: "PUT", body: { rating: fb.rating, comment: area.value } });
        state.feedback.set(m.id, saved);
        box.remove();
        toast("Thanks for your feedback");
      } catch (e) {
        toast(e.message);
      }
    });
    area.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); save.click(); }
      if (e.key === "Escape") { e.stopPropagation(); box.remove(); }
    });
    node.querySelector(".msg-body").append(box);
    toast(fb.rating > 0 ? "Marked as a good answer" : "Marked as a bad answer");
  }

  // ------------------------------------------------------------------ sending
  /** An assistant placeholder that renders streamed text at most once a frame. */
  function streamingAnswer() {
    const { node, body } = assistantShell();
    node.classList.add("streaming");
    const content = el("div", { class: "md cursor" }, el("span", { class: "thinking", "aria-label": "Thinking" }, el("i"), el("i"), el("i")));
    body.append(content);
    let text = "";
    let queued = false;
    return {
      node,
      append(delta) {
        text += delta;
        if (queued) return;
        queued = true;
        requestAnimationFrame(() => {
          queued = false;
          const follow = nearBottom();
          renderMarkdown(content, text);
          if (follow) scrollToBottom();
        });
      },
      chunk(c) {
        const choice = (c.choices || [])[0];
        if (choice && choice.template_used) node.dataset.template = choice.template_used;
      },
      fail(message) {
        content.classList.remove("cursor");
        body.append(el("div", { class: "notice", role: "alert" }, icon("alert"), el("span", { text: message })));
      },
    };
  }

  /** Marks the page busy while `work` runs; body[data-completed] counts finished actions
   * (send, regenerate, edit, compare), so scripts and tests can wait for the next one. */
  let completed = 0;
  async function tracked(work) {
    document.body.setAttribute("aria-busy", "true");
    try {
      return await work();
    } finally {
      document.body.setAttribute("aria-busy", "false");
      document.body.dataset.completed = String(++completed);
    }
  }

  async function runAnswer(path, body, { before } = {}) {
    const answer = streamingAnswer();
    if (before) before();
    $("messages").append(answer.node);
    $("welcome").hidden = true;
    scrollToBottom(true);
    try {
      const { stopped } = await stream(path, body, { onDelta: (_, t) => answer.append(t), onChunk: (c) => answer.chunk(c) });
      await reloadCurrent({ expectAnswer: stopped });
    } catch (e) {
      answer.fail(e.message);
      // refused (4xx): the server stored nothing, so the view stays as it is, error in place;
      // failed mid-answer (5xx): what was generated is stored, show it
      if (e.status >= 500) await reloadCurrent().catch(() => {});
      throw e;
    }
  }

  async function send(text) {
    text = text.trim();
    if (!text || state.streaming) return;
    return tracked(() => sendNow(text));
  }

  async function sendNow(text) {
    const model = selectedModel();
    if (!model) return toast("No model is being served");
    localStorage.setItem(MODEL_STORAGE, model);
    $("input").value = "";
    autoGrow($("input"));
    updateSendButton();
    try {
      if (!state.current) {
        const conv = await api("/v1/conversations", { method: "POST", body: { model } });
        state.current = { ...conv, messages: [] };
        state.feedback = new Map();
        ignoreNextRoute = true;
        location.hash = `#/c/${conv.id}`;
        touchConversation(conv);
      }
      const id = state.current.id;
      $("messages").append(userMessage({ id: "", content: text, role: "user" }));
      await runAnswer(`/v1/conversations/${id}/messages`, { content: text, model });
    } catch (e) {
      if (!$("input").value) $("input").value = text; // nothing typed is lost
      autoGrow($("input"));
      updateSendButton();
      if (e.status !== 401) toast(e.message);
    }
  }

  async function regenerate() {
    if (!state.current || state.streaming) return;
    return tracked(regenerateNow);
  }

  async function regenerateNow() {
    const id = state.current.id;
    const groups = groupByPosition(state.current.messages);
    const last = groups[groups.length - 1];
    try {
      await runAnswer(`/v1/conversations/${id}/regenerate`, { model: selectedModel() }, {
        before: () => {
          if (last && last[1][0].role === "assistant") {
            state.altShown.delete(last[0]);
            const nodes = $("messages").querySelectorAll(".msg");
            nodes[nodes.length - 1].remove();
          }
        },
      });
    } catch (e) {
      if (e.status !== 401) toast(e.message);
    }
  }

  function startEdit(node, m) {
    if (state.streaming || !m.id) return;
    const area = el("textarea", { "aria-label": "Edit message" });
    area.value = m.content;
    const cancel = el("button", { type: "button", class: "btn", text: "Cancel" });
    const save = el("button", { type: "button", class: "btn btn-primary", text: "Send" });
    const box = el("div", { class: "edit-box" }, area, el("div", { class: "row" }, cancel, save));
    const bodyEl = node.querySelector(".msg-body");
    const old = [...bodyEl.childNodes];
    bodyEl.replaceChildren(box);
    autoGrow(area);
    area.focus();
    cancel.addEventListener("click", () => bodyEl.replaceChildren(...old));
    const submit = async () => {
      const text = area.value.trim();
      if (!text) return;
      // drop this message and everything after it from view; the server does the same
      while (node.nextSibling) node.nextSibling.remove();
      bodyEl.replaceChildren(el("div", { class: "bubble", text }));
      try {
        await runAnswer(`/v1/conversations/${state.current.id}/edit`, { message_id: m.id, content: text, model: selectedModel() });
      } catch (e) {
        if (e.status !== 401) toast(e.message);
      }
    };
    save.addEventListener("click", () => tracked(submit));
    area.addEventListener("input", () => autoGrow(area));
    area.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); tracked(submit); }
      if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); cancel.click(); }
    });
  }

  // ------------------------------------------------------------------ compare mode
  const LETTERS = "ABCD";

  async function runCompare(event) {
    event.preventDefault();
    if (state.streaming || !$("compare-prompt").value.trim()) return;
    return tracked(compareNow);
  }

  async function compareNow() {
    const prompt = $("compare-prompt").value.trim();
    if (!prompt) return;
    const n = Number($("compare-n").value);
    const model = selectedModel();
    const sampling = { temperature: Number($("compare-temp").value), max_tokens: Number($("compare-max").value) || 128 };
    const run = (state.compare = { id: null, n, model, rankingId: null, cards: [], places: new Map() });
    const box = $("compare-answers");
    box.style.setProperty("--cols", String(Math.min(n, 4)));
    box.replaceChildren();
    $("compare-notice").hidden = true;
    $("compare-footer").hidden = true;
    for (let i = 0; i < n; i++) {
      const body = el("div", { class: "answer-body md cursor" }, el("span", { class: "thinking", "aria-label": "Thinking" }, el("i"), el("i"), el("i")));
      const rank = el("div", { class: "answer-rank" });
      const badge = el("span", { class: "rank-badge", hidden: true });
      const card = el("article", { class: "answer-card", "data-index": String(i), "aria-label": `Answer ${LETTERS[i]}` },
        el("div", { class: "answer-head" }, el("div", { class: "answer-label" }, el("span", { class: "answer-letter", text: LETTERS[i] }), `Answer ${LETTERS[i]}`), badge),
        body, rank);
      box.append(card);
      run.cards.push({ card, body, rank, badge, text: "", template: null, finish: null, queued: false });
    }
    try {
      const { stopped } = await stream("/v1/compare", { model, prompt, system: $("compare-system").value || null, n, ...sampling }, {
        onChunk: (c) => {
          if (c.conversation_id) run.id = c.conversation_id;
          for (const ch of c.choices || []) {
            const card = run.cards[ch.index];
            if (!card) continue;
            if (ch.finish_reason) card.finish = ch.finish_reason;
            if (ch.template_used) card.template = ch.template_used;
          }
        },
        onDelta: (i, t) => {
          const card = run.cards[i];
          card.text += t;
          if (card.queued) return;
          card.queued = true;
          requestAnimationFrame(() => { card.queued = false; renderMarkdown(card.body, card.text); });
        },
      });
      if (stopped) {
        // stored as cancelled; give it a moment, then offer what was written for ranking
        await new Promise((r) => setTimeout(r, 300));
        for (const card of run.cards) if (!card.finish) card.finish = "cancelled";
      }
    } catch (e) {
      $("compare-notice").replaceChildren(icon("alert"), el("span", { text: e.message }));
      $("compare-notice").hidden = false;
      for (const card of run.cards) card.body.classList.remove("cursor");
      return;
    }
    finishCompare(run);
  }

  function finishCompare(run) {
    for (const card of run.cards) {
      card.body.classList.remove("cursor");
      renderMarkdown(card.body, card.text || "");
      if (!card.text) card.body.append(el("p", { class: "muted", text: "(no text)" }));
      if (card.template) {
        card.body.prepend(el("div", { class: "notice", role: "note" }, icon("alert"), el("span", { text: TEMPLATE_NOTICE[card.template] || TEMPLATE_NOTICE.output })));
      }
    }
    const rankable = run.cards.filter((c) => !c.template && c.finish !== "content_filter");
    if (run.cards.some((c) => c.template === "input")) {
      $("compare-notice").replaceChildren(icon("alert"), el("span", { text: "This prompt was flagged by content moderation, so the model was not asked. There is nothing to rank." }));
      $("compare-notice").hidden = false;
    } else if (rankable.length < 2) {
      $("compare-notice").replaceChildren(icon("alert"), el("span", { text: "Fewer than two answers are the model's own (moderation replaced the others), so there is nothing to rank. Try again." }));
      $("compare-notice").hidden = false;
    }
    if (!run.id || rankable.length < 2) return;
    run.rankable = rankable;
    for (const card of run.cards) {
      if (!rankable.includes(card)) {
        card.rank.replaceChildren(el("span", { text: "Not rankable: replaced by a standard reply" }));
        continue;
      }
      const buttons = rankable.map((_, k) => {
        const b = el("button", { type: "button", class: "rank-btn", "aria-pressed": "false", "aria-label": `Place ${k + 1} for answer ${LETTERS[run.cards.indexOf(card)]}`, text: String(k + 1) });
        b.addEventListener("click", () => setPlace(run, card, k + 1));
        return b;
      });
      card.rank.replaceChildren(el("span", { text: "Place" }), ...buttons);
    }
    $("compare-footer").hidden = false;
    $("compare-save").textContent = "Save ranking";
    updateRankingSummary(run);
    $("compare-answers").querySelector(".rank-btn").focus();
  }

  function setPlace(run, card, place) {
    if (run.places.get(card) === place) run.places.delete(card);
    else run.places.set(card, place);
    for (const c of run.rankable) {
      const p = run.places.get(c);
      c.rank.querySelectorAll(".rank-btn").forEach((b, k) => b.setAttribute("aria-pressed", String(p === k + 1)));
      c.badge.hidden = !p;
      c.badge.textContent = p === 1 ? "Best" : p ? `#${p}` : "";
      c.card.classList.toggle("ranked-1", p === 1);
    }
    updateRankingSummary(run);
  }

  /** Tie groups of choice indices, best first: places 1,1,3 -> [[a, b], [c]]. */
  function rankingGroups(run) {
    const byPlace = new Map();
    for (const [card, place] of run.places) {
      if (!byPlace.has(place)) byPlace.set(place, []);
      byPlace.get(place).push(run.cards.indexOf(card));
    }
    return [...byPlace.entries()].sort((a, b) => a[0] - b[0]).map(([, g]) => g.sort((a, b) => a - b));
  }

  function updateRankingSummary(run) {
    const complete = run.places.size === run.rankable.length;
    const summary = $("compare-summary");
    if (!run.places.size) {
      summary.textContent = "Give every answer a place: 1 is best. Equal places are a tie.";
    } else {
      const text = rankingGroups(run).map((g) => g.map((i) => LETTERS[i]).join(" = ")).join("  >  ");
      summary.replaceChildren("Your ranking: ", el("strong", { text }), complete ? "" : "  (place every answer to save)");
    }
    $("compare-save").disabled = !complete;
  }

  async function saveRanking() {
    const run = state.compare;
    if (!run || run.places.size !== run.rankable.length) return;
    const ranking = rankingGroups(run).map((g) => (g.length === 1 ? g[0] : g));
    try {
      const saved = run.rankingId
        ? await api(`/v1/rankings/${run.rankingId}`, { method: "PUT", body: { ranking } })
        : await api("/v1/rankings", { method: "POST", body: { conversation_id: run.id, ranking } });
      run.rankingId = saved.id;
      $("compare-save").textContent = "Update ranking";
      toast("Ranking saved — thank you");
    } catch (e) {
      toast(e.message);
    }
  }

  // ------------------------------------------------------------------ composer and layout
  function autoGrow(area) {
    area.style.height = "auto";
    area.style.height = `${Math.min(area.scrollHeight, 220)}px`;
  }

  function updateSendButton() {
    $("send").disabled = !$("input").value.trim() || Boolean(state.streaming);
  }

  const nearBottom = () => {
    const s = $("scroller");
    return s.scrollHeight - s.scrollTop - s.clientHeight < 120;
  };

  function scrollToBottom(force = false) {
    const s = $("scroller");
    if (force || nearBottom()) s.scrollTop = s.scrollHeight;
  }

  function openSidebar() {
    $("app").classList.add("sidebar-open");
    $("scrim").hidden = false;
    $("search").focus();
  }

  function closeSidebar() {
    $("app").classList.remove("sidebar-open");
    $("scrim").hidden = true;
  }

  const SUGGESTIONS = [
    ["Explain", "how a classification algorithm works"],
    ["Write", "a haiku about the first snow"],
    ["Give me", "three tips for sleeping better"],
    ["Summarise", "what a reward model is for"],
  ];

  let ignoreNextRoute = false;

  function bindUi() {
    for (const node of document.querySelectorAll("[data-icon]")) node.prepend(icon(node.dataset.icon));
    $("signin-form").addEventListener("submit", onSignin);
    $("signout").addEventListener("click", signOut);
    $("new-chat").addEventListener("click", () => { location.hash = ""; closeSidebar(); route(); });
    $("topbar-new").addEventListener("click", () => { location.hash = ""; route(); });
    $("open-compare").addEventListener("click", () => { location.hash = "#/compare"; closeSidebar(); });
    $("open-sidebar").addEventListener("click", openSidebar);
    $("close-sidebar").addEventListener("click", closeSidebar);
    $("scrim").addEventListener("click", closeSidebar);
    $("search").addEventListener("input", renderConversationList);
    $("model").addEventListener("change", () => localStorage.setItem(MODEL_STORAGE, $("model").value));
    $("composer").addEventListener("submit", (e) => { e.preventDefault(); send($("input").value); });
    $("stop").addEventListener("click", stopGeneration);
    $("compare-stop").addEventListener("click", stopGeneration);
    $("input").addEventListener("input", () => { autoGrow($("input")); updateSendButton(); });
    $("input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        send($("input").value);
      }
    });
    $("compare-form").addEventListener("submit", runCompare);
    $("compare-prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("compare-form").requestSubmit(); }
    });
    $("compare-temp").addEventListener("input", () => { $("compare-temp-out").textContent = $("compare-temp").value; });
    $("compare-save").addEventListener("click", saveRanking);
    document.addEventListener("keydown", (e) => {
      if (e.key !== "Escape") return;
      if (state.streaming) { e.preventDefault(); stopGeneration(); }
      else if ($("app").classList.contains("sidebar-open")) closeSidebar();
    });
    window.addEventListener("hashchange", () => {
      if (ignoreNextRoute) { ignoreNextRoute = false; return; }
      route();
    });
    $("suggestions").replaceChildren(...SUGGESTIONS.map(([head, rest]) => {
      const b = el("button", { type: "button", class: "suggestion" }, el("strong", { text: head }), rest);
      b.addEventListener("click", () => send(`${head} ${rest}`));
      return b;
    }));
  }

  async function start() {
    state.me = await api("/v1/me");
    await loadModels();
    $("signin").hidden = true;
    $("app").hidden = false;
    $("who-name").textContent = state.me.name;
    $("who-avatar").textContent = (state.me.name || "?").slice(0, 1);
    $("signout").hidden = !localStorage.getItem(KEY_STORAGE);
    await loadConversations();
    await route();
  }

  function boot() {
    configureMarkdown();
    bindUi();
    start().catch((e) => {
      if (e instanceof ApiError && e.status === 401) return; // the sign-in form is showing
      document.body.replaceChildren(el("div", { class: "signin" },
        el("div", { class: "signin-card" }, el("h1", { text: "Cannot load chatfactory" }), el("p", { class: "muted", text: e.message }))));
    });
  }

  // for tests and debugging: the renderer, to check it with hostile input
  window.chatfactory = { renderMarkdown, state };
  boot();
})();
