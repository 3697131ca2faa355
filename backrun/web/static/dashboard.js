// backrun dashboard: ask before an action. Without JavaScript the server asks instead.
"use strict";
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute("data-confirm");
  if (!question) { return; }
  if (!window.confirm(question)) { event.preventDefault(); return; }
  var field = form.querySelector("input[name=confirm]");
  if (field) { field.value = "yes"; }
});
