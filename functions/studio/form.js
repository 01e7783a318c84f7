// A form from a recipe's params JSON Schema (pydantic's model_json_schema): enums become
// selects, booleans checkboxes, bounded numbers number inputs, anything else a text input
// whose value is read as JSON when it parses. Only values a person changed are sent.

const label = (name, prop) => prop.title || name.replaceAll("_", " ");

// The field's main type: the first non-null branch of an anyOf, and whether null is allowed.
function resolve(prop) {
  if (!prop.anyOf) return { type: prop, nullable: false, mixed: false };
  const branches = prop.anyOf.filter((b) => b.type !== "null");
  return { type: branches[0] || {}, nullable: branches.length < prop.anyOf.length, mixed: branches.length > 1 };
}

function control(name, prop) {
  const { type, nullable, mixed } = resolve(prop);
  const id = `param-${name}`;
  let input;
  if (!mixed && type.enum) {
    input = document.createElement("select");
    const options = nullable ? ["", ...type.enum] : type.enum;
    for (const value of options) {
      const option = new Option(value === "" ? "(automatic)" : String(value), value);
      input.append(option);
    }
    input.value = prop.default ?? "";
  } else if (!mixed && type.type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(prop.default);
  } else if (!mixed && (type.type === "integer" || type.type === "number")) {
    input = document.createElement("input");
    input.type = "number";
    input.inputMode = type.type === "integer" ? "numeric" : "decimal";
    if (type.minimum !== undefined) input.min = type.minimum;
    if (type.maximum !== undefined) input.max = type.maximum;
    input.step = type.multipleOf || (type.type === "integer" ? 1 : "any");
    input.value = prop.default ?? "";
    if (nullable) input.placeholder = "automatic";
  } else {
    input = document.createElement(/prompt/.test(name) ? "textarea" : "input");
    if (input.tagName === "INPUT") input.type = "text";
    const value = prop.default;
    input.value = value === null || value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value);
    if (nullable) input.placeholder = "automatic";
  }
  input.id = id;
  input.name = name;
  input.dataset.initial = input.type === "checkbox" ? String(input.checked) : input.value;
  input.dataset.kind = mixed ? "json" : type.type || "string";
  return input;
}

export function renderParams(fieldset, schema) {
  for (const node of [...fieldset.children]) if (node.tagName !== "LEGEND") node.remove();
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    const wrap = document.createElement("div");
    const input = control(name, prop);
    const caption = document.createElement("label");
    caption.htmlFor = input.id;
    caption.textContent = label(name, prop);
    wrap.className = input.type === "checkbox" ? "field check" : "field";
    if (prop.description) {
      const hint = document.createElement("small");
      hint.id = `${input.id}-hint`;
      hint.textContent = prop.description;
      input.setAttribute("aria-describedby", hint.id);
      wrap.append(caption, input, hint);
    } else {
      wrap.append(caption, input);
    }
    fieldset.append(wrap);
  }
}

// The params a person changed, typed; throws Error with a message for a value that is not valid.
export function readParams(fieldset) {
  const params = {};
  for (const input of fieldset.querySelectorAll("input, select, textarea")) {
    const raw = input.type === "checkbox" ? String(input.checked) : input.value.trim();
    if (raw === input.dataset.initial || raw === "") continue;
    if (!input.checkValidity()) throw new Error(`${input.name}: ${input.validationMessage}`);
    const kind = input.dataset.kind;
    if (kind === "boolean") params[input.name] = input.checked;
    else if (kind === "integer" || kind === "number") params[input.name] = Number(raw);
    else if (kind === "json" || kind === "array" || kind === "object") {
      try { params[input.name] = JSON.parse(raw); } catch { params[input.name] = raw; }
    } else params[input.name] = raw;
  }
  return params;
}
