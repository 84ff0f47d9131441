// The one way the UI talks to the server: the same HTTP API any client uses. Errors carry the
// server's own message (OpenAI's error shape), so the UI can show it as is.

const KEY = "lantern.apiKey";

export function apiKey(): string {
  return localStorage.getItem(KEY) ?? "";
}

export function setApiKey(key: string) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(
    message: string,
    public status: number,
  ) {
    super(message);
  }
}

// The admin API's token as the desktop app hands it over IPC; in a browser the page load's
// HttpOnly cookie carries it instead, and no script sees it.
let desktopToken = "";

export async function fromDesktop(): Promise<void> {
  const tauri = (window as any).__TAURI__;
  if (!tauri) return;
  try {
    const info = await tauri.core.invoke("server_info");
    desktopToken = info?.admin_token ?? "";
  } catch {
    /* an older app: the cookie still serves */
  }
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const h: Record<string, string> = { ...extra };
  const key = apiKey() || desktopToken;
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

async function failure(r: Response): Promise<ApiError> {
  let message = `${r.status} ${r.statusText}`;
  try {
    const body = await r.json();
    if (body?.error?.message) message = body.error.message;
  } catch {
    /* not JSON */
  }
  return new ApiError(message, r.status);
}

export async function request<T = any>(
  method: string,
  path: string,
  body?: unknown,
  extraHeaders: Record<string, string> = {},
): Promise<T> {
  const init: RequestInit = { method, headers: headers(extraHeaders) };
  if (body !== undefined) {
    (init.headers as Record<string, string>)["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (!r.ok) throw await failure(r);
  return r.json();
}

export const get = <T = any>(path: string) => request<T>("GET", path);
export const post = <T = any>(path: string, body: unknown) => request<T>("POST", path, body);
export const put = <T = any>(path: string, body: unknown) => request<T>("PUT", path, body);
export const del = <T = any>(path: string) => request<T>("DELETE", path);

/** Server-sent events from `path` (EventSource cannot send the API key, so fetch reads them). */
export async function events(
  path: string,
  onEvent: (name: string, data: any) => void,
  signal: AbortSignal,
  init: RequestInit = {},
): Promise<void> {
  const r = await fetch(path, { ...init, headers: headers(init.headers as any), signal });
  if (!r.ok || !r.body) throw await failure(r);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length === 0) continue;
      const text = data.join("\n");
      if (text === "[DONE]") return;
      onEvent(name, JSON.parse(text));
    }
  }
}

export function bytes(n: number | null | undefined): string {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function fixed(n: number | null | undefined, digits = 1): string {
  return n == null || !Number.isFinite(n) ? "–" : n.toFixed(digits);
}
