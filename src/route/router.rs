//! STUB
use std::{sync::Arc, time::Duration};
pub struct RouteRequest<'a> {
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub method: &'a http::Method,
    pub headers: &'a http::HeaderMap,
}
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub index: usize,
    pub targets: Vec<(String, u32)>,
    pub timeout: Duration,
    pub rewrite: super::rewrite::Rewrite,
}
impl Route {
    pub fn pick_target(&self, _roll: u32) -> usize {
        0
    }
    pub fn total_weight(&self) -> u32 {
        1
    }
}
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}
impl Router {
    pub fn compile(routes: &[crate::config::RouteConfig]) -> Result<Router, String> {
        Ok(Router {
            routes: routes
                .iter()
                .enumerate()
                .map(|(i, r)| Route {
                    name: r.name.as_str().into(),
                    index: i,
                    targets: r.cluster.iter().map(|c| (c.clone(), 1)).collect(),
                    timeout: r.timeout.get(),
                    rewrite: super::rewrite::Rewrite::compile(r)
                        .unwrap_or(super::rewrite::Rewrite {}),
                })
                .collect(),
        })
    }
    pub fn route(&self, _req: &RouteRequest<'_>) -> Option<&Route> {
        self.routes.first()
    }
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}
