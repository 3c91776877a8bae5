// MathJax setup for pymdownx.arithmatex (generic mode): render \( \) and \[ \] spans.
// textmacros: the algorithm boxes of the docstrings (written like torch.optim's) escape
// underscores inside \textit{...}.
window.MathJax = {
  loader: { load: ["[tex]/textmacros"] },
  tex: {
    packages: { "[+]": ["textmacros"] },
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

document$.subscribe(() => {
  MathJax.typesetPromise();
});
