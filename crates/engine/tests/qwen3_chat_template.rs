//! The real Qwen3 chat template (as shipped in Qwen3's `tokenizer_config.json`) rendered by
//! `prompt::render_chat_template`; the expected strings are what Hugging Face's
//! `apply_chat_template` produces for the same conversations.

use pixlm_engine::prompt::render_chat_template;
use pixlm_engine::ChatMessage;
use serde_json::{json, Value};

const QWEN3_TEMPLATE: &str = r####"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"####;

fn render(messages: &[ChatMessage], kwargs: Value) -> String {
    let Value::Object(kw) = kwargs else {
        panic!("kwargs must be an object")
    };
    render_chat_template(
        QWEN3_TEMPLATE,
        messages,
        true,
        &kw,
        None,
        Some("<|im_end|>"),
    )
    .unwrap()
}

#[test]
fn system_and_user_default_thinking_mode() {
    let msgs = [
        ChatMessage::text("system", "You are a concise assistant."),
        ChatMessage::text(
            "user",
            "Name three primary colors and give one fact about each.",
        ),
    ];
    assert_eq!(
        render(&msgs, json!({})),
        "<|im_start|>system\nYou are a concise assistant.<|im_end|>\n\
         <|im_start|>user\nName three primary colors and give one fact about each.<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // enable_thinking=true renders like the default.
    assert_eq!(
        render(&msgs, json!({"enable_thinking": true})),
        render(&msgs, json!({}))
    );
}

#[test]
fn enable_thinking_false_adds_empty_think_block() {
    let msgs = [
        ChatMessage::text("user", "Which families?"),
        ChatMessage::text("assistant", "Sure. Which ones?"),
        ChatMessage::text("user", "Dense Qwen3 and Qwen3-MoE."),
    ];
    assert_eq!(
        render(&msgs, json!({"enable_thinking": false})),
        "<|im_start|>user\nWhich families?<|im_end|>\n\
         <|im_start|>assistant\nSure. Which ones?<|im_end|>\n\
         <|im_start|>user\nDense Qwen3 and Qwen3-MoE.<|im_end|>\n\
         <|im_start|>assistant\n<think>\n\n</think>\n\n"
    );
}

#[test]
fn earlier_reasoning_is_dropped_and_trailing_reasoning_kept() {
    // Before the last user query the <think> part of an assistant turn is removed.
    let msgs = [
        ChatMessage::text("user", "2+2?"),
        ChatMessage::text("assistant", "<think>\nadd them\n</think>\n\n4"),
        ChatMessage::text("user", "3+3?"),
    ];
    assert_eq!(
        render(&msgs, json!({})),
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n\
         <|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n"
    );
    // After it (the assistant turn being continued), the reasoning is kept, normalised.
    let msgs = [
        ChatMessage::text("user", "2+2?"),
        ChatMessage::text("assistant", "<think>\nadd them\n\n</think>\n\n4"),
    ];
    let Value::Object(kw) = json!({}) else {
        unreachable!()
    };
    let out = render_chat_template(QWEN3_TEMPLATE, &msgs, false, &kw, None, None).unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nadd them\n</think>\n\n4<|im_end|>\n"
    );
}

#[test]
fn tools_are_listed_with_python_json() {
    let msgs = [
        ChatMessage::text("system", "Be brief."),
        ChatMessage::text("user", "Weather?"),
    ];
    let out = render(
        &msgs,
        json!({"tools": [{"name": "get_weather", "parameters": {"city": "string"}}]}),
    );
    assert!(
        out.starts_with("<|im_start|>system\nBe brief.\n\n# Tools\n"),
        "{out}"
    );
    assert!(
        out.contains("<tools>\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"string\"}}\n</tools>"),
        "{out}"
    );
    assert!(out.ends_with("<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"));
}

#[test]
fn tool_responses_are_wrapped_in_a_user_turn() {
    let msgs = [
        ChatMessage::text("user", "Weather?"),
        ChatMessage::text("assistant", "Checking."),
        ChatMessage::text("tool", "sunny"),
    ];
    let out = render(&msgs, json!({}));
    assert!(
        out.ends_with(
            "<|im_start|>assistant\nChecking.<|im_end|>\n\
             <|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n\
             <|im_start|>assistant\n"
        ),
        "{out}"
    );
}
