//! FFI: what directive handlers need from the configuration being parsed — its words and a way
//! to fail with Nginx's `file:line` in the message.

use std::ffi::c_char;

use ngx::core::NGX_CONF_ERROR;
use ngx::ffi::{ngx_conf_t, ngx_str_t, NGX_LOG_EMERG};
use ngx::ngx_conf_log_error;

/// The directive's words and errors, on the `ngx_conf_t` a directive handler gets.
pub trait ConfExt {
    /// The directive's arguments after its name, as UTF-8.
    fn args(&self) -> Result<Vec<&str>, String>;
    /// Logs `msg` at emerg level with the file and line being parsed; returns what fails the
    /// directive.
    fn error(&mut self, msg: &str) -> *mut c_char;
}

impl ConfExt for ngx_conf_t {
    fn args(&self) -> Result<Vec<&str>, String> {
        // SAFETY: while a directive is parsed, `args` holds its words (the name first), in the
        // configuration's pool.
        let words: &[ngx_str_t] = unsafe { (*self.args).as_slice() };
        words[1..]
            .iter()
            .map(|word| {
                word.to_str()
                    .map_err(|_| format!("parameter \"{word}\" is not valid UTF-8"))
            })
            .collect()
    }

    fn error(&mut self, msg: &str) -> *mut c_char {
        ngx_conf_log_error!(NGX_LOG_EMERG, self, "{}", msg);
        NGX_CONF_ERROR
    }
}

/// What a handler returns for a directive written twice; Nginx adds the directive's name and
/// the file and line (`"shift" directive is duplicate in ...`).
pub fn is_duplicate() -> *mut c_char {
    c"is duplicate".as_ptr().cast_mut()
}
