import "./lib/locale";
import { mount } from "svelte";
import "uplot/dist/uPlot.min.css";
import "highlight.js/styles/github-dark.css";
import "./app.css";
import App from "./App.svelte";
import { fromDesktop } from "./lib/api";

// The desktop app's token first, so the pages' first calls carry it.
export default fromDesktop().then(() => mount(App, { target: document.getElementById("app")! }));
