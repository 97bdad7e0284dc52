/// <reference types="vitest/config" />
// JSX goes through esbuild (no @vitejs/plugin-react: its versions for Vite 7 add nothing
// we need, and 6 wants Vite 8). The console is served by control-api at /console/.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/console/",
  esbuild: { jsx: "automatic" },
  build: {
    target: "es2022",
    sourcemap: false,
    chunkSizeWarningLimit: 700,
    rollupOptions: {
      // React Router's "use client" marks are for server components; a SPA has none.
      onwarn(warning, warn) {
        if (warning.code === "MODULE_LEVEL_DIRECTIVE") return;
        warn(warning);
      },
    },
  },
  server: {
    // `npm run dev` against a running control-api (WEFT_API_URL), same origin through the proxy.
    proxy: Object.fromEntries(
      ["/v1", "/auth", "/install.sh"].map((p) => [
        p,
        { target: process.env.WEFT_API_URL ?? "http://127.0.0.1:8080", changeOrigin: false },
      ]),
    ),
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
