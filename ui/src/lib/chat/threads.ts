// The server's threads (/api/threads) and the tree their messages form: an edit or a
// regeneration is a sibling of the message it replaces, and a thread shows one branch, from its
// first message to its `leaf`.
import { request, get, post, del, events } from "../api";

export type Figures = {
  prompt_tokens: number;
  completion_tokens: number;
  ttft_ms: number;
  tokens_per_second: number | null;
  finish_reason?: string;
};

export type Msg = {
  id: string;
  parent_id: string | null;
  role: "user" | "assistant";
  content: string;
  reasoning: string;
  model: string | null;
  sampling: Record<string, any> | null;
  figures: Figures | null;
  state: "complete" | "streaming" | "interrupted" | "error";
  error: string | null;
  /** A compare's vote on this answer. */
  vote?: { experiment: string; result: "won" | "lost" | "tie" } | null;
};

/** The side panel, saved with each thread. */
export type ChatSettings = {
  model: string;
  system: string;
  temperature: number;
  top_p: number;
  max_tokens: number;
  seed: number | null;
  compression: string;
  ratio: number;
  format: "text" | "json_object" | "json_schema";
  schema: string;
  thinking: "default" | "on" | "off";
};

export const defaults = (model: string): ChatSettings => ({
  model,
  system: "You are a helpful assistant.",
  temperature: 0.7,
  top_p: 0.95,
  max_tokens: 512,
  seed: null,
  compression: "off",
  ratio: 0.5,
  format: "text",
  schema: "",
  thinking: "default",
});

export type Thread = { id: string; title: string; settings: Partial<ChatSettings>; leaf: string | null; updated_at: number };

export const listThreads = (q = "", before: number | null = null) =>
  get<{ threads: Thread[]; next_before: number | null }>(
    `/api/threads?limit=50${q ? `&q=${encodeURIComponent(q)}` : ""}${before ? `&before=${before}` : ""}`,
  );
export const createThread = (settings: ChatSettings) => post<Thread>("/api/threads", { settings });
export const loadThread = (id: string) => get<{ thread: Thread; messages: Msg[] }>(`/api/threads/${id}`);
export const updateThread = (id: string, change: { title?: string; settings?: ChatSettings; leaf?: string }) =>
  request<Thread>("PATCH", `/api/threads/${id}`, change);
export const deleteThread = (id: string) => del(`/api/threads/${id}`);
export const restoreThread = (id: string) => post(`/api/threads/${id}/restore`, {});
export const addMessage = (id: string, parent: string | null, content: string) =>
  post<Msg>(`/api/threads/${id}/messages`, { parent, content });

/** The chat completion parameters of a thread's settings (`model` overridden for a compare). */
export function requestOf(s: ChatSettings, model = s.model): Record<string, any> {
  const r: Record<string, any> = { model, temperature: Number(s.temperature), top_p: Number(s.top_p), max_tokens: Number(s.max_tokens) };
  if (s.seed !== null && (s.seed as any) !== "") r.seed = Number(s.seed);
  if (s.compression !== "off") r.compression = { method: s.compression, ratio: Number(s.ratio) };
  if (s.format === "json_object") r.response_format = { type: "json_object" };
  if (s.format === "json_schema") r.response_format = { type: "json_schema", json_schema: { name: "answer", schema: JSON.parse(s.schema || "{}") } };
  if (s.thinking !== "default") r.chat_template_kwargs = { enable_thinking: s.thinking === "on" };
  return r;
}

/** The page's session id: its usage shows on the Monitor page under it. */
export function session(): string {
  const key = "lantern.chatSession";
  let id = localStorage.getItem(key);
  if (!id) {
    // getRandomValues, not randomUUID: the desktop window's http://127.0.0.1 page is not a
    // secure context in every webview.
    const hex = [...crypto.getRandomValues(new Uint8Array(4))].map((b) => b.toString(16).padStart(2, "0")).join("");
    id = `ui-chat-${hex}`;
    localStorage.setItem(key, id);
  }
  return id;
}

/** Stream an answer to `parent` into `onDelta`; the server writes it into the thread. */
export async function reply(
  thread: string,
  body: { parent: string; system: string; request: Record<string, any>; compare?: string },
  onDelta: (d: { content?: string; reasoning?: string; usage?: any; error?: string }) => void,
  signal: AbortSignal,
) {
  await events(
    `/api/threads/${thread}/reply`,
    (_name, chunk) => {
      const d = chunk.choices?.[0]?.delta;
      onDelta({ content: d?.content || undefined, reasoning: d?.reasoning_content || undefined, usage: chunk.usage, error: chunk.error?.message });
    },
    signal,
    { method: "POST", headers: { "Content-Type": "application/json", "X-Session-Id": session() }, body: JSON.stringify(body) },
  );
}

/** The messages from the first to `leaf`. */
export function branchOf(messages: Msg[], leaf: string | null): Msg[] {
  const byId = new Map(messages.map((m) => [m.id, m]));
  const path: Msg[] = [];
  for (let m = leaf ? byId.get(leaf) : undefined; m && path.length <= messages.length; m = m.parent_id ? byId.get(m.parent_id) : undefined)
    path.push(m);
  return path.reverse();
}

/** A message and its alternatives (same parent, same role), oldest first. */
export const siblingsOf = (messages: Msg[], m: Msg) => messages.filter((x) => x.parent_id === m.parent_id && x.role === m.role);

/** The end of the newest branch under `id`. */
export function newestLeaf(messages: Msg[], id: string): string {
  for (;;) {
    const children = messages.filter((m) => m.parent_id === id);
    if (children.length === 0) return id;
    id = children[children.length - 1].id;
  }
}

/** A compare group: the answers to one message sent to several variants at once. */
export const compareGroup = (m: Msg): string | null => m.sampling?.compare ?? null;
