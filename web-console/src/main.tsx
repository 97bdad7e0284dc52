import { StrictMode, lazy, Suspense } from "react";
import { createRoot } from "react-dom/client";
import { createBrowserRouter, RouterProvider } from "react-router";
import "./style.css";
import { Root, Home } from "./app/Root";
import { Shell } from "./app/Shell";
import { Overview } from "./pages/Overview";
import { Nodes } from "./pages/Nodes";
import { Flows } from "./pages/Flows";
import { ServiceMapPage } from "./pages/ServiceMap";
import { Policies } from "./pages/Policies";
import { Services } from "./pages/Services";
import { Settings } from "./pages/Settings";
import { Connectivity } from "./pages/Connectivity";
import { Loading } from "./app/ui";

// CodeMirror and the editor load only on the policy page.
const PolicyEditor = lazy(() => import("./pages/PolicyEditor"));

const router = createBrowserRouter(
  [
    {
      path: "/",
      element: <Root />,
      children: [
        { index: true, element: <Home /> },
        {
          path: "t/:tenant",
          element: <Shell />,
          children: [
            { index: true, element: <Overview /> },
            { path: "nodes", element: <Nodes /> },
            { path: "flows", element: <Flows /> },
            { path: "map", element: <ServiceMapPage /> },
            { path: "services", element: <Services /> },
            { path: "policies", element: <Policies /> },
            { path: "connectivity", element: <Connectivity /> },
            { path: "settings", element: <Settings /> },
            { path: "settings/:tab", element: <Settings /> },
            {
              path: "policies/:policy",
              element: (
                <Suspense fallback={<Loading what="the editor" />}>
                  <PolicyEditor />
                </Suspense>
              ),
            },
          ],
        },
      ],
    },
  ],
  { basename: "/console" },
);

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <RouterProvider router={router} />
  </StrictMode>,
);
