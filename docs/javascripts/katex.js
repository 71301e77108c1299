// Typesets the formulas that pymdownx.arithmatex marks (class "arithmatex"): "\(...\)" inline,
// "\[...\]" displayed. A formula KaTeX cannot parse is shown in red with the error as its title.
function renderFormulas(root) {
  root.querySelectorAll(".arithmatex").forEach((element) => {
    const text = element.textContent.trim();
    const display = text.startsWith("\\[");
    katex.render(text.slice(2, -2), element, {
      displayMode: display,
      throwOnError: false,
      strict: false,
    });
  });
}

if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => renderFormulas(body));
} else {
  document.addEventListener("DOMContentLoaded", () => renderFormulas(document.body));
}
