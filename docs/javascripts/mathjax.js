// MathJax 3's configuration: typeset only what pymdownx.arithmatex marks as math (class
// "arithmatex", delimiters \( \) and \[ \]).  MathJax itself is served from assets/mathjax/.
window.MathJax = {
  tex: {
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
