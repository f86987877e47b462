// Vite as Tauri expects it: a fixed port for `tauri dev` (src-tauri/tauri.conf.json's devUrl),
// the build in dist/ for `tauri build` (frontendDist). No imports: it runs as it is.
export default {
  clearScreen: false,
  server: { port: 1420, strictPort: true },
  build: { target: "es2022", outDir: "dist" },
};
