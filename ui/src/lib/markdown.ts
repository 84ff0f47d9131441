// Markdown as the Chat page shows it: marked's HTML, sanitized by DOMPurify, with code blocks
// highlighted by highlight.js (a handful of languages, so the bundle stays lean) and a copy
// button on each.
import { marked } from "marked";
import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import c from "highlight.js/lib/languages/c";
import cpp from "highlight.js/lib/languages/cpp";
import css from "highlight.js/lib/languages/css";
import go from "highlight.js/lib/languages/go";
import java from "highlight.js/lib/languages/java";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import python from "highlight.js/lib/languages/python";
import rust from "highlight.js/lib/languages/rust";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";

for (const [name, lang] of Object.entries({ bash, c, cpp, css, go, java, javascript, json, python, rust, sql, typescript, xml, yaml }))
  hljs.registerLanguage(name, lang);

export const renderMarkdown = (text: string): string => DOMPurify.sanitize(marked.parse(text, { async: false }) as string);

/** Svelte action on an element holding rendered markdown: highlight its code, add copy buttons. */
export function codeBlocks(node: HTMLElement, _html: string) {
  const enhance = () => {
    for (const pre of node.querySelectorAll("pre")) {
      const code = pre.querySelector("code");
      if (!code || pre.querySelector("button.copy")) continue;
      const lang = [...code.classList].find((c) => c.startsWith("language-"))?.slice(9);
      if (lang && hljs.getLanguage(lang)) {
        code.innerHTML = hljs.highlight(code.textContent ?? "", { language: lang, ignoreIllegals: true }).value;
        code.classList.add("hljs");
      }
      const button = document.createElement("button");
      button.className = "copy";
      button.type = "button";
      button.textContent = "Copy";
      button.onclick = async () => {
        try {
          await navigator.clipboard.writeText(code.textContent ?? "");
          button.textContent = "Copied";
        } catch {
          button.textContent = "Copy failed";
        }
        setTimeout(() => (button.textContent = "Copy"), 1500);
      };
      pre.prepend(button);
    }
  };
  enhance();
  return { update: () => queueMicrotask(enhance) };
}
