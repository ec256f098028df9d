// The harness' stand-in for the plugin "TikTok Auth Mobile" (not on npm): what its `connect` service and
// controller do once TikTok has answered, with the same query-engine calls and the same jwt service.
// `blocked` is set afterwards, as an administrator would. Only requests with the server's seed key
// (devstack/strapi.py, SEED_PATH and SEED_KEY_HEADER) are served.
const USER = 'plugin::users-permissions.user';
const ROLE = 'plugin::users-permissions.role';

module.exports = {
  register({ strapi }) {
    strapi.server.routes([{
      method: 'POST',
      path: '/bridge-test/tiktok-users',
      config: { auth: false },
      handler: async (ctx) => {
        if (ctx.request.headers['x-bridge-test-seed-key'] !== process.env.BRIDGE_TEST_SEED_KEY) {
          ctx.status = 403;
          return;
        }
        const { union_id, display_name, blocked } = ctx.request.body;
        const email = `${union_id}@tiktok.com`.toLowerCase();
        const advanced = await strapi.store({ type: 'plugin', name: 'users-permissions', key: 'advanced' }).get();
        const role = await strapi.query(ROLE).findOne({ where: { type: advanced.default_role } });
        let user = await strapi.query(USER).create({
          data: { username: decodeURIComponent(display_name), email, provider: 'tiktok', role: role.id, confirmed: true },
        });
        if (blocked) {
          user = await strapi.query(USER).update({ where: { id: user.id }, data: { blocked: true } });
        }
        const jwt = strapi.plugin('users-permissions').service('jwt').issue({ id: user.id });
        const { password, resetPasswordToken, confirmationToken, ...shown } = user;
        ctx.body = { jwt, user: shown };
      },
    }]);
  },
  bootstrap() {},
};
