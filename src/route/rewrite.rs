//! STUB
#[derive(Debug)]
pub struct Rewrite {}
impl Rewrite {
    pub fn compile(_r: &crate::config::RouteConfig) -> Result<Rewrite, String> {
        Ok(Rewrite {})
    }
    pub fn is_noop(&self) -> bool {
        true
    }
    pub fn rewrite_path(&self, _p: &str) -> Option<String> {
        None
    }
    pub fn host(&self) -> Option<&http::HeaderValue> {
        None
    }
    pub fn apply_request_headers(&self, _h: &mut http::HeaderMap) {}
    pub fn apply_response_headers(&self, _h: &mut http::HeaderMap) {}
}
