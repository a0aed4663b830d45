import { html, type SafeHtml } from './html.ts';

// No inline script or style anywhere: the CSP forbids them. The stylesheet is served by the server.
export function layout(title: string, body: SafeHtml, options: { wide?: boolean } = {}): string {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${title} · Clinical AuthZ</title>
<link rel="stylesheet" href="/static/app.css">
</head>
<body>
<main${options.wide ? html` class="wide"` : ''}>
<h1>${title}</h1>
${body}
</main>
</body>
</html>`.value;
}
